"""build_cache shards and AVDataset reading them."""
from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from mmt_core.config import DataConfig
from mmt_core.data.cache import build_cache
from mmt_core.data.dataset import AVDataset
from mmt_core.data.manifests import read_manifest
from mmt_core.errors import UserError


@pytest.fixture(scope="module")
def cached(synth_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cachedata")
    shutil.copy(synth_dir / "manifest.csv", root / "manifest.csv")
    shutil.copytree(synth_dir / "test", root / "test")
    (root / "test" / "broken.mp4").write_text("not a video")
    with (root / "manifest.csv").open("a", newline="") as f:
        csv.writer(f).writerow(["test/broken.mp4", "ball_bell", "test"])
    cfg = DataConfig(manifest=str(root / "manifest.csv"), num_frames=4, image_size=56,
                     clip_seconds=2.0, audio_frames=200, num_mel_bins=64)
    out = root / "cache"
    result = build_cache(cfg, out, split="test", progress=False, fps=25)
    return cfg, out, result


def test_build_cache_files(cached):
    cfg, out, result = cached
    assert result["clips"] == 6 and result["skipped"] == 1 and result["side"] == 64
    frames = np.load(out / "test_frames.npy", mmap_mode="r")
    fbank = np.load(out / "test_fbank.npy", mmap_mode="r")
    index = json.loads((out / "test_index.json").read_text())
    assert frames.dtype == np.uint8 and frames.shape[1:] == (64, 64, 3)
    assert frames.shape[0] == 6 * 100  # 4 s at 25 fps per clip; the broken one got no slot
    assert fbank.dtype == np.float16 and fbank.shape[1] == 64
    assert len(index["clips"]) == 6 and "broken.mp4" in index["skipped"][0]["path"]


def test_dataset_reads_cache(cached):
    cfg, out, _ = cached
    m = read_manifest(cfg.manifest, split="test")
    plain = AVDataset(m.records, m.classes, cfg, train=False)
    fast = AVDataset(m.records, m.classes, dataclasses.replace(cfg, cache_dir=str(out)), train=False)
    for i in range(len(m.records) - 1):
        a, b = plain[i], fast[i]
        assert a["video"].shape == b["video"].shape and a["audio"].shape == b["audio"].shape
        # same frames up to the cache's resize rounding; the fbank differs by float16 and by the
        # resampler's sub-sample phase (decoding from a seek point vs from the file start)
        assert (a["video"].float() - b["video"].float()).abs().mean() < 5.7  # uint8 levels
        diff = (a["audio"] - b["audio"]).abs()
        assert diff.mean() < 0.02 and diff.quantile(0.99) < 0.15, (diff.mean(), diff.max())
    assert fast[len(m.records) - 1] is None  # the broken clip is not in the cache: decoding fails
    train = AVDataset(m.records, m.classes, dataclasses.replace(cfg, cache_dir=str(out)),
                      train=True, two_views=True)
    item = train[0]  # random windows and augmentation still apply on cached data
    assert item["video"].shape == (3, 4, 56, 56) and not torch.equal(item["video"], item["video2"])


def test_cache_config_mismatch_is_loud(cached):
    cfg, out, _ = cached
    m = read_manifest(cfg.manifest, split="test")
    ds = AVDataset(m.records, m.classes, dataclasses.replace(cfg, cache_dir=str(out), num_mel_bins=128),
                   train=False)
    with pytest.raises(UserError, match="num_mel_bins"):
        ds[0]  # a config problem, not a broken clip: it must not turn into None


def test_cache_errors(tmp_path):
    with pytest.raises(UserError, match="manifest"):
        build_cache(DataConfig(), tmp_path / "c", split="train", progress=False)
    m = tmp_path / "m.csv"
    m.write_text("path,label,split\na.mp4,x,train\n")
    with pytest.raises(UserError, match="no clips"):
        build_cache(DataConfig(manifest=str(m)), tmp_path / "c", split="test", progress=False)
    with pytest.raises(UserError, match="could be opened"):
        build_cache(DataConfig(manifest=str(m)), tmp_path / "c", split="train", progress=False)
