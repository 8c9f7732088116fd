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
    assert item["video"].dtype == item["video2"].dtype == torch.uint8  # normalised on the device
    assert item["audio"].dtype == torch.float32
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
            assert abs(item["video"][0, k].float().mean().item() - level) < 3


def test_paper_views_differ_audio_repeats(tmp_path):
    # the paper's protocol on a 10-s clip: 5 test views of a 2-s video window, one audio window
    clip = make_media(tmp_path / "ten.mp4", seconds=10.0, fps=10, rate=16000)
    cfg = dataclasses.replace(CFG, clip_seconds=10.0, video_seconds=2.0, audio_frames=1000)
    item = AVDataset([ClipRecord(str(clip), {"label": 0})], {"label": ["a"]}, cfg, train=False,
                     num_views=5)[0]
    assert item["video"].shape == (5, 3, 4, 32, 32) and item["audio"].shape == (5, 1, 64, 1000)
    means = item["video"].float().mean(dim=(1, 3, 4))  # (V, T) grey level of each frame
    assert len({tuple(m.round().tolist()) for m in means}) == 5  # five different frame windows
    for v in range(5):  # view v shows the frames of [2v, 2v + 2) s (+ the ~0.02-s centring)
        shown = [int((0.024 + 2 * v + 0.25 + 0.5 * k) * 10) for k in range(4)]
        np.testing.assert_allclose(means[v].numpy(), [frame_level(i) for i in shown], atol=3)
    for v in range(1, 5):
        assert torch.equal(item["audio"][v], item["audio"][0])  # the audio: the same in each


def test_two_views_decode_once(synth_dir, monkeypatch):
    from mmt_core.data import dataset as dataset_mod

    calls = []
    real = dataset_mod.decode_views
    monkeypatch.setattr(dataset_mod, "decode_views",
                        lambda *a, **kw: calls.append(kw["num_views"]) or real(*a, **kw))
    monkeypatch.setattr(dataset_mod, "decode", None)  # the per-view path must not run
    item = _ds(synth_dir, train=True, two_views=True)[1]
    assert calls == [2]  # ONE decode for both IMC views
    assert not torch.equal(item["video"], item["video2"])  # augmented twice
    assert not torch.equal(item["audio"], item["audio2"])  # SpecAugment twice


def test_persistent_workers_see_the_epoch(synth_dir):
    from mmt_core.engine import ResumableSampler

    ds = _ds(synth_dir, train=True)
    sampler = ResumableSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=1,
                                         persistent_workers=True, collate_fn=collate_skip_broken)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)  # ds.set_epoch is NOT called: the keys carry the epoch
        batch = next(iter(loader))
        first = int(batch["index"][0])
        assert torch.equal(batch["video"][0], ds.load(first, epoch)["video"])
    assert not torch.equal(ds.load(first, 1)["video"], ds.load(first, 2)["video"])
