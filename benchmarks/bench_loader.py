"""Training items per second per DataLoader worker from each storage: files, the frame+fbank
cache, mp4 shards and decoded shards — at the demo input size and at the paper's.

    python benchmarks/bench_loader.py [--clips-per-class 4] [--passes 2] [--sizes demo,paper]
                                      [--vgg-like 4]

Writes the built-in dataset into a temp dir, builds each storage once, then times training
items (random window, crops, flip, SpecAugment, normalise) in ONE process with ONE torch thread —
what one DataLoader worker does. Prints one JSON object: per size and storage, items/s, CPU ms
per item and bytes per stored sample. The built-in clips are 4 s of 128x128 H.264: at the paper
size the output-side costs (16 frames resized to 224², a 10-s fbank) are real, but decoding a
VGGSound clip (10 s, ~360p) costs more than decoding these, so `--vgg-like N` also times N
generated 10-s 480x360 clips at the paper size; see docs/scaling.md.
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


def _shard_stream(out: Path, classes, cfg, n: int, two_views: bool = False):
    idx = read_index(str(out))
    urls, _ = shard_urls(str(out), idx, "train")
    ds = ShardDataset(urls, idx, classes, cfg, train=True, two_views=two_views, seed=0,
                      batch_size=1, batches_per_epoch=n)
    ds.set_epoch(1)
    return ds


def _vgg_like_clip(path: Path, seed: int, seconds: float = 10.0, size=(480, 360)) -> None:
    """A VGGSound-shaped clip: 10 s, 480x360 at 25 fps H.264 (x264 defaults) + 44.1 kHz stereo
    AAC, with a moving textured scene (busier than the built-in clips, so decoding costs more)."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    w, h = size
    tex = rng.integers(0, 256, (h * 2, w * 2, 3), dtype=np.uint8)
    tex = ((tex.astype(np.float32) + np.roll(tex, 1, 0) + np.roll(tex, 1, 1)) / 3).astype(np.uint8)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        a = c.add_stream("aac", rate=44100, layout="stereo")
        n = int(seconds * 25)
        for i in range(n):
            y, x = int(h / 2 + h / 3 * np.sin(i / 30)), int(w / 2 + w / 3 * np.cos(i / 40))
            img = tex[y:y + h, x:x + w].copy()
            img[h // 3:h // 3 + 60, (i * 7) % (w - 60):(i * 7) % (w - 60) + 60] = (230, 40, 40)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        t = np.arange(int(seconds * 44100)) / 44100
        wav = (0.3 * np.sin(2 * np.pi * 300 * t * (1 + 0.2 * np.sin(t))) +
               0.05 * rng.standard_normal(t.size)).astype(np.float32)
        step = a.codec_context.frame_size or 1024
        for k in range(0, wav.size - step, step):
            f = av.AudioFrame.from_ndarray(np.stack([wav[k:k + step]] * 2), format="fltp",
                                           layout="stereo")
            f.sample_rate, f.pts = 44100, k
            for p in a.encode(f):
                c.mux(p)
        for s in (vs, a):
            for p in s.encode(None):
                c.mux(p)


def _vgg_like(tmp: Path, clips: int, passes: int) -> dict:
    """Files vs mp4 shards at the paper size on VGGSound-shaped clips (decoding dominates)."""
    import csv

    d = tmp / "vgg"
    d.mkdir()
    for i in range(clips):
        _vgg_like_clip(d / f"clip{i}.mp4", i)
    with open(d / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for i in range(clips):
            w.writerow([f"clip{i}.mp4", f"c{i % 2}", "train"])
    m = read_manifest(d / "manifest.csv", split="train")
    frames, side, secs, audio_frames = SIZES["paper"]
    cfg = DataConfig(manifest=str(d / "manifest.csv"), num_frames=frames, image_size=side,
                     clip_seconds=secs, audio_frames=audio_frames, num_mel_bins=128)
    n, w = passes * clips, min(2, clips)
    files = AVDataset(m.records, m.classes, cfg, train=True)
    out = write_shards(d / "manifest.csv", tmp / "vgg_mp4", split="train", progress=False)
    dec = write_shards(d / "manifest.csv", tmp / "vgg_dec", split="train", decoded_cfg=cfg,
                       progress=False)
    return {"clips": clips, "clip": "10 s, 480x360, 25 fps H.264 + AAC stereo",
            "mp4_bytes_per_sample": out["bytes"] // out["samples"],
            "files": _time((files[i % clips] for i in range(n + w)), n, w),
            "shards_mp4": _time(_shard_stream(tmp / "vgg_mp4", m.classes, cfg, n + w), n, w),
            "shards_decoded": {**_time(_shard_stream(tmp / "vgg_dec", m.classes, cfg, n + w), n, w),
                               "bytes_per_sample": _bytes(tmp / "vgg_dec") // dec["samples"]},
            # the paper's IMC loss: two augmented views per item (two windows decoded from mp4)
            "shards_mp4_two_views": _time(_shard_stream(tmp / "vgg_mp4", m.classes, cfg, n + w,
                                                        True), n, w),
            "shards_decoded_two_views": _time(_shard_stream(tmp / "vgg_dec", m.classes, cfg, n + w,
                                                            True), n, w)}


def _bytes(out: Path) -> int:
    return sum(f.stat().st_size for f in out.glob("train-*.tar"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips-per-class", type=int, default=4)
    ap.add_argument("--passes", type=int, default=2, help="items timed = passes x clips")
    ap.add_argument("--sizes", default="demo,paper")
    ap.add_argument("--vgg-like", type=int, default=4,
                    help="also time N generated VGGSound-shaped clips at the paper size (0 = skip)")
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
            cached = AVDataset(m.records, m.classes,
                               dataclasses.replace(cfg, cache_dir=cache["out_dir"]), train=True)
            row["cache"] = _time((cached[i % n_clips] for i in range(n + w)), n, w)
            row["cache"]["bytes_per_sample"] = cache["bytes"] // cache["clips"]
            row["shards_mp4"] = _time(_shard_stream(tmp / "mp4", m.classes, cfg, n + w), n, w)
            row["shards_mp4"]["bytes_per_sample"] = r["mp4_shard_bytes_per_sample"]
            t = time.perf_counter()
            dec = write_shards(manifest, tmp / f"dec_{size}", split="train", decoded_cfg=cfg,
                               progress=False)
            row["decoded_shard_write_s_per_clip"] = round((time.perf_counter() - t) / n_clips, 3)
            stream = _shard_stream(tmp / f"dec_{size}", m.classes, cfg, n + w)
            row["shards_decoded"] = _time(stream, n, w)
            row["shards_decoded"]["bytes_per_sample"] = _bytes(tmp / f"dec_{size}") // dec["samples"]
            r[size] = row
        if a.vgg_like:
            r["paper_vgg_like"] = _vgg_like(tmp, a.vgg_like, a.passes)
    r.update(seconds=round(time.perf_counter() - t_all, 1),
             load_avg_1m_end=round(os.getloadavg()[0], 2),
             cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
             torch_threads=1, note="one process = one DataLoader worker; train-mode items")
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
