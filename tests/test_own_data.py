"""Own data: `mmt train --data`, `mmt compare`, the carved validation split, automatic statistics,
bad-data errors, heads across class lists, the fused-head init, the stop event."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from conftest import make_media
from engine_helpers import tiny_cfg
from mmt_core import checkpoint as ckpt
from mmt_core.data.manifests import ClipRecord, read_manifest
from mmt_core.data.splits import carve_split

ROOT = Path(__file__).resolve().parents[1]
# Small inputs so each step costs little; batch 2 because the tiny datasets have few clips.
SMALL = ["data.num_frames=4", "data.image_size=32", "train.batch_size=2", "train.device=cpu",
         "train.log_every=1"]


@pytest.fixture(autouse=True)
def stats_cache(tmp_path, monkeypatch):
    """Statistics are cached under $MMT_CACHE: a fresh one per test, never the user's."""
    monkeypatch.setenv("MMT_CACHE", str(tmp_path / "mmt_cache"))
    return tmp_path / "mmt_cache"


def _cfg(model="mat_tiny", *extra):
    from mmt_core.own_data import own_config

    return own_config(model, [*SMALL, *extra])


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    return path


def _train_clips(synth_dir):
    """[(path, label)] of the built-in tiny dataset's training clips (2 per class)."""
    m = read_manifest(synth_dir / "manifest.csv", split="train")
    return [(r.path, m.classes["label"][r.labels["label"]]) for r in m.records]


# ---------------------------------------------------------------- carved validation split

def _recs(counts: dict[int, int]) -> list[ClipRecord]:
    return [ClipRecord(path=f"/d/{c}_{i}.mp4", labels={"label": c}, split="train")
            for c, n in counts.items() for i in range(n)]


def test_carved_split_is_stratified_seeded_and_disjoint():
    recs = _recs({0: 10, 1: 3, 2: 2, 3: 1})
    out = carve_split(recs, 0.2, seed=0)
    val = {r.path for r in out if r.split == "val"}
    train = {r.path for r in out if r.split == "train"}
    assert not val & train and len(val | train) == len(recs)
    per_class = {c: sum(1 for r in out if r.split == "val" and r.labels["label"] == c)
                 for c in range(4)}
    assert per_class == {0: 2, 1: 1, 2: 1, 3: 0}  # >= 1 where possible, never a whole class
    assert [r.split for r in carve_split(recs, 0.2, seed=0)] == [r.split for r in out]
    shuffled = carve_split(list(reversed(recs)), 0.2, seed=0)  # order does not matter
    assert {r.path for r in shuffled if r.split == "val"} == val
    assert any({r.path for r in carve_split(recs, 0.2, seed=s) if r.split == "val"} != val
               for s in (1, 2, 3))


# ---------------------------------------------------------------- statistics, window, split

def test_prepare_computes_stats_like_mmt_stats_and_caches_them(synth_dir, tmp_path, capsys):
    from mmt_core.data.features import dataset_stats
    from mmt_core.own_data import prepare_own_data

    cfg, info = prepare_own_data(synth_dir / "manifest.csv", _cfg(), tmp_path / "a")
    ref = dataset_stats(info["manifest"], split="train", progress=False, num_mel_bins=64)
    assert ref["clips"] == 6  # 12 training clips, one per class carved out as validation
    assert cfg.data.audio_mean == round(ref["mean"], 4) and cfg.data.audio_std == round(ref["std"], 4)
    assert not info["stats_cached"] and info["val_carved"]
    assert info["clips"] == {"test": 6, "train": 6, "val": 6}
    err = capsys.readouterr().err
    assert "carved 6 of 12 training clips" in err and "fbank statistics of the 6" in err
    # the clip window follows the 4 s clips, capped by the recipe (4 s): 4 s, 400 -> 384 frames
    assert (cfg.data.clip_seconds, cfg.data.audio_frames) == (4.0, 384)
    assert cfg.data.manifest == str((tmp_path / "a" / "manifest.csv").resolve())
    assert cfg.data.cache_dir and (Path(cfg.data.cache_dir) / "train_index.json").is_file()

    # Second call on the same data: the statistics come from the cache (same numbers).
    cfg2, info2 = prepare_own_data(synth_dir / "manifest.csv", _cfg(), tmp_path / "b")
    assert info2["stats_cached"] and cfg2.data.audio_mean == cfg.data.audio_mean
    assert "(cached)" in capsys.readouterr().err
    # Given statistics are kept.
    cfg3, info3 = prepare_own_data(synth_dir / "manifest.csv",
                                   _cfg("mat_tiny", "data.audio_mean=-3.5", "data.audio_std=2.5"),
                                   tmp_path / "c")
    assert (cfg3.data.audio_mean, cfg3.data.audio_std) == (-3.5, 2.5) and info3["stats_given"]


def test_short_clips_get_a_short_window(tmp_path):
    from mmt_core.own_data import clip_window

    assert clip_window([1.5, 1.5, 3.0], cap=4.0) == (1.5, 144)  # 148 fbank frames -> 144
    assert clip_window([12.0, 30.0], cap=4.0) == (4.0, 384)


# ---------------------------------------------------------------- bad data: exit 2, one line

def _cli_error(capsys, data, tmp_path) -> str:
    from mmt_core.cli import main

    rc = main(["train", "--data", str(data), "--model", "mat_tiny", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r" / "last").exists()  # nothing trained
    return err


def test_bad_data_errors(synth_dir, tmp_path, capsys):
    clips = _train_clips(synth_dir)
    one_clip = _write_csv(tmp_path / "few.csv", [(p, c, "train") for p, c in clips[:3]])
    assert "fewer than 2 'train' clips" in _cli_error(capsys, one_clip, tmp_path)
    one_class = _write_csv(tmp_path / "one.csv", [(p, "x", "train") for p, _ in clips])
    assert "only one class" in _cli_error(capsys, one_class, tmp_path)
    missing = _write_csv(tmp_path / "missing.csv", [(p, c, "train") for p, c in clips]
                         + [(str(tmp_path / "gone1.mp4"), "a", "train"),
                            (str(tmp_path / "gone2.mp4"), "a", "train")])
    err = _cli_error(capsys, missing, tmp_path)
    assert "2 of 14 clips do not exist" in err and "gone1.mp4" in err
    short = make_media(tmp_path / "short.mp4", seconds=0.5)
    shorts = _write_csv(tmp_path / "short.csv", [(p, c, "train") for p, c in clips]
                        + [(str(short), clips[0][1], "train")])
    err = _cli_error(capsys, shorts, tmp_path)
    assert "shorter than 1 s" in err and "short.mp4" in err
    (tmp_path / "empty").mkdir()
    assert "empty folder" in _cli_error(capsys, tmp_path / "empty", tmp_path)
    # a val split that leaves a class out; a group column with one group per class
    no_val = _write_csv(tmp_path / "noval.csv", [(p, c, "train") for p, c in clips]
                        + [(clips[0][0], clips[0][1], "val")])
    assert "have no clips in the 'val' split" in _cli_error(capsys, no_val, tmp_path)
    with open(tmp_path / "grouped.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "group"])
        w.writerows([(p, c, "train", f"rec_{c}") for p, c in clips])
    assert "single group" in _cli_error(capsys, tmp_path / "grouped.csv", tmp_path)


# ---------------------------------------------------------------- heads, fused head, stop

def test_heads_are_copied_only_between_equal_class_lists(synth_dir, tmp_path):
    from mmt_core.engine import _init_weights, build_model, train

    man = synth_dir / "manifest.csv"
    res = train(tiny_cfg(man, "model=mat_tiny", "train.max_steps=1"), tmp_path / "a", progress=False)
    src, meta = ckpt.load_checkpoint(res["last"])
    cfg = tiny_cfg(man, "model=mat_tiny", f"train.init={res['last']}")
    other = {"label": [f"other{i}" for i in range(6)]}  # same count, other names
    model = build_model(cfg, other)
    fresh = model.heads.label.weight.detach().clone()
    _init_weights(model, cfg, other)
    assert torch.equal(model.heads.label.weight, fresh)
    assert torch.equal(model.audio.patch_embed.weight, src.audio.patch_embed.weight)
    same = build_model(cfg, meta["classes"])
    _init_weights(same, cfg, meta["classes"])
    assert torch.equal(same.heads.label.weight, src.heads.label.weight)


def test_fused_head_starts_at_the_logit_sum(synth_dir, tmp_path):
    from mmt_core.engine import _init_weights, build_model, train

    man = synth_dir / "manifest.csv"
    runs = {}
    for name in ("mat_tiny", "mvit_tiny_video"):
        runs[name] = train(tiny_cfg(man, f"model={name}", "train.max_steps=1"), tmp_path / name,
                           progress=False)["last"]
    audio, meta = ckpt.load_checkpoint(runs["mat_tiny"])
    video, _ = ckpt.load_checkpoint(runs["mvit_tiny_video"])
    # No fusion tokens: the encoders then compute exactly what the unimodal models compute.
    cfg = tiny_cfg(man, "model_args.fusion_tokens=0", "train.init_fused_head=true",
                   f"train.init={runs['mvit_tiny_video']},{runs['mat_tiny']}")
    mmt = build_model(cfg, meta["classes"])
    _init_weights(mmt, cfg, meta["classes"])
    torch.manual_seed(0)
    v, a = torch.randn(3, 3, 4, 32, 32), torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        for m in (mmt, audio, video):
            m.eval()
        fused = mmt(video=v, audio=a).logits
        summed = audio(audio=a).logits + video(video=v).logits
    torch.testing.assert_close(fused, summed, rtol=1e-4, atol=1e-5)
    # Switched off (the default): the fused head is left fresh.
    cfg_off = tiny_cfg(man, "model_args.fusion_tokens=0",
                       f"train.init={runs['mvit_tiny_video']},{runs['mat_tiny']}")
    off = build_model(cfg_off, meta["classes"])
    fresh = off.heads.label.weight.detach().clone()
    _init_weights(off, cfg_off, meta["classes"])
    assert torch.equal(off.heads.label.weight, fresh)


def test_stop_event_saves_and_returns_and_records_reach_the_callback(synth_dir, tmp_path):
    from mmt_core.engine import train

    stop, records = threading.Event(), []

    def on_record(rec):
        records.append(rec)
        stop.set()  # ask to stop as soon as the first step is logged

    res = train(tiny_cfg(synth_dir / "manifest.csv", "model=mat_tiny", "train.epochs=3"),
                tmp_path / "r", progress=False, on_record=on_record, stop=stop)
    assert res["stopped"] is True and res["step"] == 1
    assert Path(res["last"]).is_dir() and ckpt.read_meta(res["last"])["step"] == 1
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert records == lines and records[0]["type"] == "step"


# ---------------------------------------------------------------- end to end

def test_train_data_folder_end_to_end(synth_dir, tmp_path):
    data = tmp_path / "clips"
    for path, label in _train_clips(synth_dir)[:6]:  # 3 classes x 2 clips, class folders
        (data / label).mkdir(parents=True, exist_ok=True)
        (data / label / Path(path).name).symlink_to(path)
    sets = [a for o in SMALL for a in ("--set", o)]
    r = subprocess.run([sys.executable, "-m", "mmt_core", "train", "--data", str(data),
                        "--model", "mat_tiny", "--out", str(tmp_path / "run"), "--epochs", "1",
                        *sets, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "MMT_CACHE": str(tmp_path / "c")})
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["clips"] == {"train": 3, "val": 3} and res["best"]
    meta = ckpt.read_meta(res["best"])
    pre = meta["preprocessing"]
    assert pre["clip_seconds"] == 4.0 and pre["audio_frames"] == 384
    assert (pre["audio_mean"], pre["audio_std"]) == (res["audio_mean"], res["audio_std"])
    assert pre["audio_mean"] != -4.2677393  # not the AudioSet default
    assert meta["data"]["val_split"] == "val" and meta["data"]["val_clips"] == 3


@pytest.mark.slow
def test_compare_rows(synth_dir, tmp_path):
    from mmt_core.own_data import compare, format_table

    res = compare(synth_dir / "manifest.csv", tmp_path / "cmp", epochs=1, progress=False,
                  overrides=SMALL)
    assert [r["model"] for r in res["rows"]] == ["audio-only", "video-only", "Avg (late fusion)",
                                                 "Product (late fusion)", "MMT"]
    for row in res["rows"]:
        assert 0 <= row["top1"] <= row["top5"] <= 1 and row["clips"] == 6
        assert len(row["per_class"]) == 6
    assert set(res["checkpoints"]) == {"audio", "video", "mmt"}
    meta = ckpt.read_meta(res["checkpoints"]["mmt"])
    assert meta["config"]["train"]["init"].count(",") == 1  # from the two unimodal runs
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"] == res["rows"]
    assert "MMT" in format_table(res)


# ---------------------------------------------------------------- fusion switches

def _tiny_mmt(**kw):
    from mmt_core import create_model

    torch.manual_seed(0)
    return create_model("mmt_tiny", num_classes=5, num_frames=4, image_size=32, mel_bins=64,
                        audio_frames=64, **kw)


def test_aux_heads_give_unimodal_logits_and_a_weighted_loss():
    import torch.nn.functional as F

    from mmt_core.config import LossConfig
    from mmt_core.losses import compute_losses

    model = _tiny_mmt(aux_heads=True)
    out = model(video=torch.randn(4, 3, 4, 32, 32), audio=torch.randn(4, 1, 64, 64))
    y = {"label": torch.tensor([0, 1, 2, 3])}
    assert {m: t["label"].shape for m, t in out.unimodal_logits.items()} == \
        {"video": (4, 5), "audio": (4, 5)}
    # the unimodal heads read E_CLS^V / E_CLS^A alone
    torch.testing.assert_close(out.unimodal_logits["audio"]["label"],
                               model.audio_heads["label"](out.audio_embed))
    cfg = LossConfig(avc=False, imc=False, aux_ce=0.5)
    terms = compute_losses(out, y, cfg=cfg, epoch=1)
    aux = (F.cross_entropy(out.unimodal_logits["video"]["label"], y["label"])
           + F.cross_entropy(out.unimodal_logits["audio"]["label"], y["label"])) / 2
    torch.testing.assert_close(terms["aux_ce"], aux)
    torch.testing.assert_close(terms["total"], terms["ce"] + 0.5 * aux)
    off = compute_losses(out, y, cfg=LossConfig(avc=False, imc=False), epoch=1)
    assert "aux_ce" not in off and torch.equal(off["total"], off["ce"])
    assert not hasattr(_tiny_mmt(), "audio_heads")  # off by default: the paper's model


def test_aux_ce_without_aux_heads_is_a_config_error(synth_dir, tmp_path):
    from mmt_core.engine import train
    from mmt_core.errors import ConfigError

    with pytest.raises(ConfigError, match="aux_heads"):
        train(tiny_cfg(synth_dir / "manifest.csv", "loss.aux_ce=0.5"), tmp_path / "r",
              progress=False)


def test_modality_dropout_drops_one_modality_per_sample_in_training_only():
    from mmt_core.models.mmt import modality_keep

    torch.manual_seed(0)
    kv, ka = modality_keep(4000, 0.4)
    assert not ((kv == 0) & (ka == 0)).any()  # never both
    assert abs(float((kv == 0).float().mean()) - 0.2) < 0.03
    assert abs(float((ka == 0).float().mean()) - 0.2) < 0.03
    kv, ka = modality_keep(100, 1.0)
    assert torch.equal(kv + ka, torch.ones(100))  # p = 1: exactly one kept
    model = _tiny_mmt(modality_dropout=1.0)
    v, a = torch.randn(6, 3, 4, 32, 32), torch.randn(6, 1, 64, 64)
    out = model.train()(video=v, audio=a)
    zero_v = (out.video_embed == 0).all(1)
    zero_a = (out.audio_embed == 0).all(1)
    assert torch.equal(zero_v ^ zero_a, torch.ones(6, dtype=torch.bool))
    torch.testing.assert_close(out.logits, model.heads["label"](out.fused_embed))
    ev = model.eval()(video=v, audio=a)
    assert not (ev.video_embed == 0).all(1).any() and not (ev.audio_embed == 0).all(1).any()
