"""The training loop on the built-in dataset: run dir contents, exact resume, broken clips,
the lr schedule, the two-view split, and the recipes / ablation rows."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from engine_helpers import tiny_cfg
from mmt_core import checkpoint as ckpt
from mmt_core.ablations import ABLATION_ROWS, row_config
from mmt_core.config import load_config
from mmt_core.engine import lr_factor, split_output, train
from mmt_core.models.output import ModelOutput

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, total=100, warmup=10, min_ratio=0.01) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:10], f[1:10]))  # rising during warm-up
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # then never rising
    assert lr_factor(100, total=100, warmup=10, min_ratio=0.01) == pytest.approx(0.01)
    assert f[55] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_split_output_separates_the_two_views():
    x = torch.arange(8.0).reshape(4, 2)
    out = ModelOutput(head_logits={"label": x}, audio_proj=x + 1, video_proj=None,
                      aux_logits={"audio": {"label": x * 2}})
    a, b = split_output(out, 2)
    assert torch.equal(a.logits, x[:2]) and torch.equal(b.logits, x[2:])
    assert torch.equal(b.audio_proj, x[2:] + 1) and a.video_proj is None
    assert torch.equal(b.aux_logits["audio"]["label"], x[2:] * 2)


def test_train_writes_metrics_checkpoints_and_links(synth_dir, tmp_path):
    cfg = tiny_cfg(synth_dir / "manifest.csv", "train.epochs=2", "train.keep_last=1",
                   "data.test_views=3")
    res = train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert res["step"] == 6 and res["epoch"] == 2  # 12 train clips / batch 4 = 3 steps per epoch
    assert res["val_clips"] == 6 and 0.0 <= res["val_top1"] <= 1.0
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["type"] == "step"]
    epochs = [r for r in lines if r["type"] == "epoch"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["total"]) and {"ce", "avc", "imc", "lambda", "lr"} <= set(r)
               for r in steps)
    assert [r["epoch"] for r in epochs] == [1, 2] and all("val_top1" in r for r in epochs)
    # best is chosen on 1 view every epoch; the recipe's 3 test views run once, at the end
    assert "val_views" not in epochs[0] and epochs[1]["val_views"] == 3
    assert res["val_views"] == 3 and 0.0 <= res["val_views_top1"] <= 1.0
    assert (run / "last").is_symlink() and (run / "best").is_symlink()
    assert len(list(run.glob("step-*"))) <= 2  # keep_last=1, plus best if it is older
    model, meta = ckpt.load_checkpoint(run / "last")
    assert meta["step"] == 6 and meta["classes"]["label"][0] == "ball_bell"
    assert meta["data"]["generator_version"] == 2  # the built-in data it was trained on
    assert list(run.glob("tb/events.out.tfevents.*"))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_is_bit_exact(synth_dir, tmp_path, workers):
    # drop_path makes the model's own randomness matter; no val split keeps it quick.
    # 3 steps per epoch: stop at step 2 (mid-epoch 1), resume, go on to step 5 (mid-epoch 2).
    extra = ["train.epochs=3", "data.val_split=", f"data.num_workers={workers}",
             "model_args.drop_path=0.1"]
    manifest = synth_dir / "manifest.csv"
    train(tiny_cfg(manifest, *extra, "max_steps=5"), tmp_path / "a", progress=False)
    train(tiny_cfg(manifest, *extra, "max_steps=2"), tmp_path / "b", progress=False)
    assert ckpt.load_train_state(tmp_path / "b" / "last")["pos"] == 2
    halfway, _ = ckpt.load_checkpoint(tmp_path / "b" / "last")
    res = train(tiny_cfg(manifest, *extra, "max_steps=5"), tmp_path / "b", resume=True,
                progress=False)
    assert res["step"] == 5
    a, _ = ckpt.load_checkpoint(tmp_path / "a" / "last")
    b, _ = ckpt.load_checkpoint(tmp_path / "b" / "last")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # The resumed part did move the weights (an exact match of two no-ops would prove nothing).
    assert not all(torch.equal(sb[k], halfway.state_dict()[k]) for k in sb)


def test_broken_clips_are_skipped_and_reported(synth_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    (data / "garbage.mp4").write_bytes(b"this is not a video" * 50)
    with open(data / "manifest.csv", "a", newline="") as f:
        w = csv.writer(f)
        w.writerow(["garbage.mp4", "ball_bell", "train"])
        w.writerow(["missing.mp4", "box_bell", "train"])
    # 14 train clips in 2 batches of 7: every clip, the two broken ones included, is visited.
    cfg = tiny_cfg(data / "manifest.csv", "train.epochs=1", "train.batch_size=7",
                   "data.val_split=")
    res = train(cfg, tmp_path / "run", progress=False)
    assert res["skipped"] == 2 and res["step"] == 2
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in lines if r["type"] == "epoch"] == [2]


def test_recipes_load_and_ablation_yamls_match_rows():
    for path in CONFIGS.glob("*.yaml"):
        load_config(path)
    base = load_config(CONFIGS / "ablations" / "base.yaml")
    for row in ABLATION_ROWS:
        from_yaml = load_config(CONFIGS / "ablations" / f"{row}.yaml")
        assert from_yaml.to_dict() == row_config(base, row).to_dict(), row
    full = row_config(base, "avc_imc")
    assert full.loss.avc and full.loss.imc and not full.loss.al
    assert row_config(base, "video_only").model_args["modalities"] == "v"


def test_flatten_views_folds_views_into_the_batch():
    from mmt_core.evaluation import flatten_views

    single = {"video": torch.zeros(2, 3, 4, 8, 8), "audio": torch.zeros(2, 1, 16, 16)}
    assert flatten_views(single)[1] == 1
    multi = {"video": torch.zeros(2, 5, 3, 4, 8, 8), "audio": torch.zeros(2, 5, 1, 16, 16)}
    flat, views = flatten_views(multi)
    assert views == 5 and flat["video"].shape == (10, 3, 4, 8, 8)
    assert flat["audio"].shape == (10, 1, 16, 16)


def test_run_ablations_trains_each_seed_and_summarises_mean_and_sd(synth_dir, tmp_path):
    from mmt_core.ablations import run_ablations, summarize_ablations

    base = tiny_cfg(synth_dir / "manifest.csv", "max_steps=1", "data.val_split=test")
    res = run_ablations(base, tmp_path, rows=["video_only", "avg"], seeds=[0, 1], progress=False,
                        pointing_per_class=1)
    saved = json.loads((tmp_path / "ablations.json").read_text())
    assert saved == res == summarize_ablations(tmp_path) and list(res) == ["video_only", "avg"]
    # by default every explainer that applies to a row: audio contrast needs the audio encoder
    assert set(res["video_only"]["explainers"]) == {"gradcam", "relevance", "occlusion"}
    assert set(res["avg"]["explainers"]) == {"gradcam", "relevance", "occlusion", "audio_contrast"}
    avg = res["avg"]
    assert avg["seeds"] == [0, 1] and avg["clips"] == 6 and avg["steps"] == 1
    per_seed = [json.loads((tmp_path / f"seed{s}" / "ablations.json").read_text())["avg"]
                for s in (0, 1)]
    tops = [r["top1"] for r in per_seed]
    assert abs(avg["top1"] - sum(tops) / 2) < 1e-9
    assert abs(avg["top1_sd"] - abs(tops[0] - tops[1]) / 2 ** 0.5) < 1e-9  # sample sd of two
    assert avg["explainers"]["gradcam"]["clips"] == 6  # 1 clip per class of 6 classes
    best = avg["pointing_best"]
    assert best["accuracy"] == max(e["accuracy"] for e in avg["explainers"].values())
    # the two seeds trained different weights into their own folders
    w = [ckpt.load_checkpoint(tmp_path / f"seed{s}" / "avg" / "last")[1] for s in (0, 1)]
    assert w[0]["model_args"]["fusion"] == "avg" and not w[0]["config"]["loss"]["avc"]
    assert [m["config"]["train"]["seed"] for m in w] == [0, 1]


def test_init_from_a_video_and_an_audio_checkpoint_fills_both_encoders(synth_dir, tmp_path):
    from mmt_core.engine import _init_weights, build_model

    man = synth_dir / "manifest.csv"
    uni = {}
    for name in ("mvit_tiny_video", "mat_tiny"):
        res = train(tiny_cfg(man, f"model={name}", "train.max_steps=1"), tmp_path / name,
                    progress=False)
        uni[name] = ckpt.load_checkpoint(res["last"])[0].state_dict()
    cfg = tiny_cfg(man, f"train.init={tmp_path / 'mvit_tiny_video' / 'last'},"
                        f"{tmp_path / 'mat_tiny' / 'last'}")
    classes = {"label": [str(i) for i in range(6)]}  # not the checkpoints' class names
    model = build_model(cfg, classes)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    _init_weights(model, cfg, classes)
    state = model.state_dict()
    for prefix, src in (("video.", uni["mvit_tiny_video"]), ("audio.", uni["mat_tiny"])):
        keys = [k for k in state if k.startswith(prefix)]
        assert keys and all(torch.equal(state[k], src[k]) for k in keys)
    # the fused head (on [E_CLS^V, E_CLS^A]) and the fusion tokens have no unimodal source
    assert torch.equal(state["heads.label.weight"], fresh["heads.label.weight"])
    assert torch.equal(state["bottleneck.tokens"], fresh["bottleneck.tokens"])
