"""Training items per second per DataLoader worker from each storage: files, the frame+fbank
cache, mp4 shards and decoded shards — at the demo input size and at the paper's.

    python benchmarks/bench_loader.py [--clips-per-class 4] [--passes 2] [--sizes demo,paper]

Writes the built-in dataset into a temp dir, builds each storage once, then times training
items (random window, crops, flip, SpecAugment, normalise) in ONE process with ONE torch thread —
what one DataLoader worker does. Prints one JSON object: per size and storage, items/s, CPU ms
per item and bytes per stored sample. The built-in clips are 4 s of 128x128 H.264: at the paper
size the output-side costs (16 frames resized to 224², a 10-s fbank) are real, but decoding a
VGGSound clip (10 s, ~360p) costs more than decoding these; see docs/scaling.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from mmt_core.config import DataConfig
from mmt_core.data import synthetic
from mmt_core.data.cache import build_cache
from mmt_core.data.dataset import AVDataset
from mmt_core.data.manifests import read_manifest
from mmt_core.data.shards import ShardDataset, read_index, shard_urls, write_shards

SIZES = {  # name: (num_frames, image_size, clip_seconds, audio_frames)
    "demo": (8, 96, 3.2, 320),  # configs/synthetic_base.yaml
    "paper": (16, 224, 10.0, 1024),  # configs/paper_base.yaml
}


def _time(items, n: int, warmup: int) -> dict:
    """Steady-state rate: `warmup` items untimed (imports, memmaps, the shuffle buffer's first
    fill), then n items timed."""
    it = iter(items)
    for _ in range(warmup):
        _check(next(it))
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        _check(next(it))
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"items_per_s": round(n / wall, 2), "cpu_ms_per_item": round(1000 * cpu / n, 1)}


def _check(item) -> None:
    assert item is not None and "broken" not in item, item


def _shard_stream(out: Path, classes, cfg, n: int):
    idx = read_index(str(out))
    urls, _ = shard_urls(str(out), idx, "train")
    ds = ShardDataset(urls, idx, classes, cfg, train=True, seed=0, batch_size=1,
                      batches_per_epoch=n)
    ds.set_epoch(1)
    return ds


def _bytes(out: Path) -> int:
    return sum(f.stat().st_size for f in out.glob("train-*.tar"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips-per-class", type=int, default=4)
    ap.add_argument("--passes", type=int, default=2, help="items timed = passes x clips")
    ap.add_argument("--sizes", default="demo,paper")
    a = ap.parse_args()
    torch.set_num_threads(1)  # what one DataLoader worker gets
    r: dict = {"load_avg_1m_start": round(os.getloadavg()[0], 2)}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic.write_dataset(tmp / "data", clips_per_class=a.clips_per_class, seed=0,
                                split="train", progress=False, workers=1)
        manifest = tmp / "data" / "manifest.csv"
        m = read_manifest(manifest, split="train")
        n_clips = len(m.records)
        n = a.passes * n_clips
        r.update(clips=n_clips, items_timed=n)
        mp4 = write_shards(manifest, tmp / "mp4", split="train", progress=False)
        r["mp4_shard_bytes_per_sample"] = mp4["bytes"] // mp4["samples"]
        for size in a.sizes.split(","):
            frames, side, secs, audio_frames = SIZES[size]
            cfg = DataConfig(manifest=str(manifest), num_frames=frames, image_size=side,
                             clip_seconds=secs, audio_frames=audio_frames, num_mel_bins=128)
            row: dict = {"num_frames": frames, "image_size": side, "clip_seconds": secs,
                         "fbank": f"128x{audio_frames}"}
            w = min(4, n_clips)
            files = AVDataset(m.records, m.classes, cfg, train=True)
            row["files"] = _time((files[i % n_clips] for i in range(n + w)), n, w)
            cache = build_cache(cfg, tmp / f"cache_{size}", split="train", progress=False)
            cached = AVDataset(m.records, m.classes, dataclasses.replace(cfg, cache_dir=cache["out_dir"]),
                               train=True)
            row["cache"] = _time((cached[i % n_clips] for i in range(n + w)), n, w)
            row["cache"]["bytes_per_sample"] = cache["bytes"] // cache["clips"]
            row["shards_mp4"] = _time(_shard_stream(tmp / "mp4", m.classes, cfg, n + w), n, w)
            row["shards_mp4"]["bytes_per_sample"] = r["mp4_shard_bytes_per_sample"]
            t = time.perf_counter()
            dec = write_shards(manifest, tmp / f"dec_{size}", split="train", decoded_cfg=cfg,
                               progress=False)
            row["decoded_shard_write_s_per_clip"] = round((time.perf_counter() - t) / n_clips, 3)
            row["shards_decoded"] = _time(_shard_stream(tmp / f"dec_{size}", m.classes, cfg, n + w),
                                          n, w)
            row["shards_decoded"]["bytes_per_sample"] = _bytes(tmp / f"dec_{size}") // dec["samples"]
            r[size] = row
    r.update(seconds=round(time.perf_counter() - t_all, 1), load_avg_1m_end=round(os.getloadavg()[0], 2),
             cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
             torch_threads=1, note="one process = one DataLoader worker; train-mode items")
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
