"""AVDataset items (shapes, dtypes, views, modalities, seeding) and collate_skip_broken."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from conftest import frame_level, make_media
from mmt_core.config import DataConfig
from mmt_core.data.dataset import AVDataset, collate_skip_broken
from mmt_core.data.manifests import ClipRecord, read_manifest

CFG = DataConfig(num_frames=4, image_size=32, clip_seconds=2.0, audio_frames=200, num_mel_bins=64,
                 freq_mask=8, time_mask=20)


def _ds(synth_dir, **kw):
    m = read_manifest(synth_dir / "manifest.csv", split="train")
    return AVDataset(m.records, m.classes, kw.pop("cfg", CFG), **kw)


def test_train_item(synth_dir):
    ds = _ds(synth_dir, train=True, two_views=True)
    item = ds[3]
    assert item["video"].shape == item["video2"].shape == (3, 4, 32, 32)
    assert item["audio"].shape == item["audio2"].shape == (1, 64, 200)
    assert item["video"].dtype == item["audio"].dtype == torch.float32
    assert item["labels"] == ds.records[3].labels and item["index"] == 3 and item["has_audio"] is True
    assert not torch.equal(item["video"], item["video2"])  # two independent views
    assert torch.isfinite(item["audio"]).all() and item["audio"].std() > 0.1


def test_seeding_is_per_seed_epoch_index(synth_dir):
    ds = _ds(synth_dir, train=True)
    a = ds[2]
    assert torch.equal(a["video"], ds[2]["video"]) and torch.equal(a["audio"], ds[2]["audio"])
    ds.set_epoch(1)
    assert not torch.equal(a["video"], ds[2]["video"])
    ds.set_epoch(0)
    other = _ds(synth_dir, train=True, seed=5)
    assert not torch.equal(a["video"], other[2]["video"])
    assert torch.equal(a["video"], ds[2]["video"])


def test_eval_views_and_modalities(synth_dir):
    ev = _ds(synth_dir, train=False)
    one = ev[0]
    assert one["video"].shape == (3, 4, 32, 32) and torch.equal(one["video"], ev[0]["video"])
    multi = _ds(synth_dir, train=False, num_views=3)[0]
    assert multi["video"].shape == (3, 3, 4, 32, 32) and multi["audio"].shape == (3, 1, 64, 200)
    assert not torch.equal(multi["audio"][0], multi["audio"][2])  # different windows
    # the middle of 3 evenly spaced views of a 4 s clip with 2 s windows is the centre view
    torch.testing.assert_close(multi["video"][1], one["video"])
    a_only = _ds(synth_dir, train=False, modalities="a")[0]
    v_only = _ds(synth_dir, train=False, modalities="v")[0]
    assert "video" not in a_only and torch.equal(a_only["audio"], one["audio"])
    assert "audio" not in v_only and torch.equal(v_only["video"], one["video"])


def test_broken_clip_is_none_and_counted(synth_dir, tmp_path):
    m = read_manifest(synth_dir / "manifest.csv", split="train")
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    recs = m.records[:3] + [ClipRecord(str(bad), {"label": 0}), ClipRecord(str(tmp_path / "gone.mp4"), {"label": 1})]
    ds = AVDataset(recs, m.classes, CFG, train=True)
    assert ds[3] is None and ds[4] is None
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=collate_skip_broken)
    batch = next(iter(loader))
    assert batch["skipped"] == 2 and batch["skipped_paths"] == [str(bad), str(tmp_path / "gone.mp4")]
    assert batch["video"].shape == (3, 3, 4, 32, 32) and batch["audio"].shape == (3, 1, 64, 200)
    assert batch["labels"]["label"].tolist() == [r.labels["label"] for r in m.records[:3]]
    assert batch["index"].tolist() == [0, 1, 2] and batch["has_audio"].dtype == torch.bool
    empty = collate_skip_broken([None, None])
    assert empty["skipped"] == 2 and empty["index"].numel() == 0 and "video" not in empty


def test_silent_clip_and_workers(synth_dir, tmp_path):
    silent = make_media(tmp_path / "silent.mp4", seconds=2.0, audio=False)
    m = read_manifest(synth_dir / "manifest.csv", split="train")
    ds = AVDataset([ClipRecord(str(silent), {"label": 2})] + m.records[:3], m.classes, CFG, train=True)
    item = ds[0]
    assert item["has_audio"] is False and item["audio"].shape == (1, 64, 200)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_skip_broken)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == 4
    first = batches[0]  # workers give the same items as the main process (seeded per index)
    assert torch.equal(first["video"][0], item["video"]) and first["has_audio"].tolist() == [False, True]


def test_segments_use_their_window(tmp_path):
    clip = make_media(tmp_path / "long.mp4", seconds=4.0)
    cfg = dataclasses.replace(CFG, clip_seconds=1.0, audio_frames=100)
    recs = [ClipRecord(str(clip), {"verb": 1, "noun": 2}, start=0.5, end=1.0),
            ClipRecord(str(clip), {"verb": 0, "noun": 0}, start=3.0, end=3.5)]
    ds = AVDataset(recs, {"verb": ["a", "b"], "noun": ["x", "y", "z"]}, cfg, train=False)
    early, late = ds[0], ds[1]
    assert early["labels"] == {"verb": 1, "noun": 2}
    # the tone ramps up over the file: the later segment is louder
    assert late["audio"][0, :, :40].mean() > early["audio"][0, :, :40].mean()
    for item, start in ((early, 0.5), (late, 3.0)):  # frames come from inside the segment
        for k in range(4):
            level = frame_level(int((start + (k + 0.5) * 0.5 / 4) * 25))
            assert abs(item["video"][0, k].mean().item() - (level / 255 - 0.45) / 0.225) < 0.05
