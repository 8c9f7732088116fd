"""Decode throughput on the built-in dataset, with and without the frame+fbank cache.

    python benchmarks/bench_decode.py [--clips-per-class 4] [--frames 8] [--size 112] [--json-only]

Writes a fresh synthetic set in a temp dir, then times (single process, 1 torch thread):
synthesis, media.decode alone, AVDataset training items decoded on the fly, build_cache, and
AVDataset training items read from the cache. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch

from mmt_core.config import DataConfig
from mmt_core.data import media, synthetic
from mmt_core.data.cache import build_cache
from mmt_core.data.dataset import AVDataset
from mmt_core.data.manifests import read_manifest


def _rate(n: int, fn, out: dict, name: str) -> None:
    """clips/s by the wall clock and CPU ms per clip (the latter barely moves on a busy machine)."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    out[f"{name}_per_s"] = round(n / (time.perf_counter() - t), 2)
    out[f"{name}_cpu_ms"] = round(1000 * (time.process_time() - c) / n, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips-per-class", type=int, default=4)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=112)
    a = ap.parse_args()
    torch.set_num_threads(1)  # what one DataLoader worker gets
    r: dict = {"clips": 0, "frames": a.frames, "image_size": a.size, "clip_seconds": 4.0}
    with tempfile.TemporaryDirectory() as tmp:
        n = a.clips_per_class * len(synthetic.CLASSES)
        r["clips"] = n
        _rate(n, lambda: synthetic.write_dataset(tmp, clips_per_class=a.clips_per_class, seed=0,
                                                 split="train", progress=False, workers=1),
              r, "synth_clips")
        cfg = DataConfig(manifest=os.path.join(tmp, "manifest.csv"), num_frames=a.frames,
                         image_size=a.size, clip_seconds=4.0, audio_frames=400)
        m = read_manifest(cfg.manifest, split="train")
        rng = np.random.default_rng(0)
        _rate(n, lambda: [media.decode(r.path, num_frames=a.frames, clip_seconds=4.0, rng=rng)
                          for r in m.records], r, "decode_clips")
        plain = AVDataset(m.records, m.classes, cfg, train=True)
        _rate(n, lambda: [plain[i] for i in range(n)], r, "train_items_decode")
        info = {}
        _rate(n, lambda: info.update(build_cache(cfg, os.path.join(tmp, "cache"), split="train",
                                                 progress=False)), r, "cache_build_clips")
        cached = AVDataset(m.records, m.classes, dataclasses.replace(cfg, cache_dir=info["out_dir"]),
                           train=True)
        cached[0]  # open the memmaps
        _rate(n, lambda: [cached[i] for i in range(n)], r, "train_items_cached")
    r.update(cache_bytes_per_clip=info["bytes"] // n, cache_fps=info["fps"],
             cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
             load_avg_1m=round(os.getloadavg()[0], 2))
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
