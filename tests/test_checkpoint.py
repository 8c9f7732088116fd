"""Checkpoint directories: round trip, multi-head, clear errors, atomic writes, RNG state."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from engine_helpers import tiny_cfg
from mmt_core import checkpoint as ckpt
from mmt_core.engine import build_model
from mmt_core.errors import UserError

CLASSES = {"label": [f"class{i}" for i in range(6)]}


def _model_meta(tmp_path, classes=CLASSES, seed=0):
    cfg = tiny_cfg(tmp_path / "unused.csv")
    torch.manual_seed(seed)
    model = build_model(cfg, classes).eval()
    return model, ckpt.make_meta(cfg, model, classes, metrics={"val_top1": 0.5}, step=3)


def _inputs(meta, batch=2):
    p = meta["preprocessing"]
    g = torch.Generator().manual_seed(1)
    return {"video": torch.randn(batch, 3, p["num_frames"], p["image_size"], p["image_size"],
                                 generator=g),
            "audio": torch.randn(batch, 1, p["num_mel_bins"], p["audio_frames"], generator=g)}


def test_round_trip_rebuilds_the_same_function(tmp_path):
    model, meta = _model_meta(tmp_path)
    ckpt.save_checkpoint(tmp_path / "ck", model, meta)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json",
                                                                     "model.safetensors"]
    loaded, meta2 = ckpt.load_checkpoint(tmp_path / "ck")
    assert meta2["model"] == "mmt_tiny" and meta2["classes"] == CLASSES
    assert meta2["metrics"]["val_top1"] == 0.5 and meta2["step"] == 3
    assert meta2["config"]["data"]["num_frames"] == 4
    assert set(ckpt.PREPROCESSING_KEYS) <= set(meta2["preprocessing"])
    with torch.no_grad():
        a, b = model(**_inputs(meta)).logits, loaded.eval()(**_inputs(meta)).logits
    assert a.shape == (2, 6)
    assert torch.equal(a, b)


def test_multi_head_checkpoint(tmp_path):
    classes = {"verb": ["take", "put", "open"], "noun": ["cup", "lid", "tap", "pan"]}
    model, meta = _model_meta(tmp_path, classes)
    ckpt.save_checkpoint(tmp_path / "ck", model, meta)
    loaded, _ = ckpt.load_checkpoint(tmp_path / "ck")
    with torch.no_grad():
        out = loaded.eval()(**_inputs(meta))
    assert {h: tuple(v.shape) for h, v in out.head_logits.items()} == {"verb": (2, 3),
                                                                       "noun": (2, 4)}


def test_bad_checkpoint_dirs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="model.safetensors is missing"):
        ckpt.load_checkpoint(tmp_path / "empty")
    model, meta = _model_meta(tmp_path)
    ckpt.save_checkpoint(tmp_path / "ck", model, meta)
    weights = (tmp_path / "ck" / "model.safetensors").read_bytes()
    (tmp_path / "ck" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(UserError, match="unreadable weights"):
        ckpt.load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").write_bytes(weights)
    (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        ckpt.load_checkpoint(tmp_path / "ck")
    meta["classes"] = {"label": ["a", "b"]}  # weights of a 6-class head, config says 2
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="do not match|cannot rebuild"):
        ckpt.load_checkpoint(tmp_path / "ck")


@pytest.mark.parametrize("fail_in", ["save_file", "save"])
def test_crash_while_saving_keeps_the_previous_last(tmp_path, monkeypatch, fail_in):
    run = tmp_path / "run"
    model, meta = _model_meta(tmp_path)
    first = ckpt.write_checkpoint_dir(run / "step-0000001", model, meta, {"step": 1})
    ckpt.point_link(run, "last", first)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def crash(*args, **kwargs):
        path = args[1] if len(args) > 1 else kwargs.get("filename", kwargs.get("f"))
        with open(path, "wb") as f:  # a half-written file, then the process "dies"
            f.write(b"partial")
        raise KeyboardInterrupt

    target = ckpt.torch if fail_in == "save" else ckpt
    monkeypatch.setattr(target, fail_in, crash)
    with pytest.raises(KeyboardInterrupt):
        second = ckpt.write_checkpoint_dir(run / "step-0000002", model, meta, {"step": 2})
        ckpt.point_link(run, "last", second)
    monkeypatch.undo()
    loaded, _ = ckpt.load_checkpoint(run / "last")
    assert all(torch.equal(loaded.state_dict()[k], before[k]) for k in before)
    assert ckpt.load_train_state(run / "last")["step"] == 1
    assert sorted(p.name for p in run.iterdir()) == ["last", "step-0000001"]  # no debris


def test_rng_state_survives_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save({"rng": ckpt.rng_state()}, tmp_path / "s.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_export_keeps_weights_merges_metrics_drops_state(tmp_path):
    model, meta = _model_meta(tmp_path)
    src = ckpt.write_checkpoint_dir(tmp_path / "src", model, meta, {"step": 3})
    dst = ckpt.export_checkpoint(src, tmp_path / "out", metrics={"test": {"top1": 0.9}})
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors"]
    meta2 = ckpt.read_meta(dst)
    assert meta2["metrics"] == {"val_top1": 0.5, "test": {"top1": 0.9}}


def test_reexport_keeps_derived_files_only_for_the_same_weights(tmp_path):
    model, meta = _model_meta(tmp_path)
    src = ckpt.write_checkpoint_dir(tmp_path / "src", model, meta, {"step": 3})
    dst = ckpt.export_checkpoint(src, tmp_path / "out")
    (dst / "ood.safetensors").write_bytes(b"reference of these weights")
    dst = ckpt.export_checkpoint(src, dst, metrics={"test": {"top1": 0.9}})  # same weights
    assert (dst / "ood.safetensors").read_bytes() == b"reference of these weights"
    assert ckpt.read_meta(dst)["metrics"]["test"] == {"top1": 0.9}
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    src2 = ckpt.write_checkpoint_dir(tmp_path / "src2", model, meta, {"step": 4})
    dst = ckpt.export_checkpoint(src2, dst)  # new weights: the old reference no longer applies
    assert not (dst / "ood.safetensors").exists()


def test_reexport_takes_the_sources_refitted_pool(tmp_path):
    from mmt_core.fewshot import POOL_FILE

    model, meta = _model_meta(tmp_path)
    src = ckpt.write_checkpoint_dir(tmp_path / "src", model, meta, {"step": 3})
    (src / POOL_FILE).write_bytes(b"first pool")
    dst = ckpt.export_checkpoint(src, tmp_path / "out")
    (src / POOL_FILE).write_bytes(b"refitted pool")  # same weights, a new pool
    dst = ckpt.export_checkpoint(src, dst)
    assert (dst / POOL_FILE).read_bytes() == b"refitted pool"
