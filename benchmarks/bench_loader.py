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

`--paper-loader N` times the training DataLoader itself at the paper's sizes: N generated
VGGSound-like clips (FFmpeg testsrc2 640x360 at 25 fps + a sine, H.264/AAC, 10 s), 16 frames at
224^2, audio 1x128x1024, two IMC views, batch 8, with 0, 1 and 2 worker processes (items/s,
CPU ms per item of the workers, bytes per batch by key). It runs on whichever `mmt_core` is on
PYTHONPATH (an old checkout gives the "before" column); `--video-seconds 0,2.133` also times
the paper's short video window where the checkout has `data.video_seconds`.

    python benchmarks/bench_loader.py --sizes "" --vgg-like 0 --paper-loader 8
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
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


def _clip_folder(d: Path, clips: int, make) -> object:
    """d/clip{i}.mp4 made by make(path, i), and d/manifest.csv (2 classes, all train); returns
    the manifest read back."""
    import csv

    d.mkdir()
    for i in range(clips):
        make(d / f"clip{i}.mp4", i)
    with open(d / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for i in range(clips):
            w.writerow([f"clip{i}.mp4", f"c{i % 2}", "train"])
    return read_manifest(d / "manifest.csv", split="train")


def _vgg_like(tmp: Path, clips: int, passes: int) -> dict:
    """Files vs mp4 shards at the paper size on VGGSound-shaped clips (decoding dominates)."""
    d = tmp / "vgg"
    m = _clip_folder(d, clips, _vgg_like_clip)
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


def _testsrc_clip(path: Path, seconds: float = 10.0) -> None:
    """A VGGSound-like clip by FFmpeg: testsrc2 640x360 at 25 fps + a 440-Hz sine at 44.1 kHz,
    H.264 (x264 defaults) + AAC in mp4."""
    subprocess.run(["ffmpeg", "-v", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=25:duration={seconds}",
                    "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
                    str(path)], check=True)


def _cpu_s() -> tuple[float, float]:
    """(this process, its reaped children) CPU seconds: DataLoader workers count once joined."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def _loader_rate(ds, workers: int, batch: int, batches: int) -> dict:
    """items/s of a training DataLoader over `batches` batches, timed from `iter()` (worker
    start-up included: a fork, ~0.1 s) to the last batch, so W workers running in parallel are
    all counted (a timer started after the first batch would miss their prefetched work); and
    the CPU ms per item of the process(es) that made the items."""
    from torch.utils.data import DataLoader

    from mmt_core.data.dataset import collate_skip_broken

    n = len(ds)
    order = [i % n for i in range(batch * batches)]
    loader = DataLoader(ds, batch_size=batch, sampler=order, num_workers=workers,
                        collate_fn=collate_skip_broken, persistent_workers=workers > 0)
    c0, t = _cpu_s(), time.perf_counter()
    it = iter(loader)
    first = next(it)
    for b in it:
        assert b["skipped"] == 0
    wall = time.perf_counter() - t
    own = _cpu_s()[0] - c0[0]
    del it, loader  # joins the workers: their CPU time lands in RUSAGE_CHILDREN
    kids = _cpu_s()[1] - c0[1]
    items = batch * batches
    per_batch = {k: int(first[k].numel() * first[k].element_size())
                 for k in ("video", "video2", "audio", "audio2") if k in first}
    return {"num_workers": workers, "items_per_s": round(items / wall, 2),
            "cpu_ms_per_item": round(1000 * (own if workers == 0 else kids) / items, 1),
            "video_dtype": str(first["video"].dtype) if "video" in first else None,
            "bytes_per_batch": sum(per_batch.values()),
            "bytes_per_batch_by_key": per_batch}


def _paper_loader(tmp: Path, clips: int, batches: int, video_seconds: list[float],
                  workers: list[int], clip: str = "testsrc2", modalities: str = "av") -> dict:
    """The paper's training items (16 x 224^2, 1x128x1024, two IMC views, batch 8) through the
    DataLoader, on generated 10-s clips: FFmpeg's testsrc2 640x360, or `busy` (the VGG-like
    480x360 moving texture of `_vgg_like_clip`, ~2.4x the bytes: a pessimistic decode cost)."""
    d = tmp / "paper_loader"
    m = _clip_folder(d, clips, _vgg_like_clip if clip == "busy" else
                     lambda path, i: _testsrc_clip(path))
    frames, side, secs, audio_frames = SIZES["paper"]
    has_vs = "video_seconds" in {f.name for f in dataclasses.fields(DataConfig)}
    out = {"clips": clips, "clip": ("10 s, busy texture 480x360, 25 fps H.264 + AAC stereo"
                                    if clip == "busy" else
                                    "10 s, testsrc2 640x360, 25 fps H.264 + 440 Hz sine AAC"),
           "mp4_bytes_per_clip": sum(p.stat().st_size for p in d.glob("*.mp4")) // clips,
           "batch": 8, "two_views": True, "modalities": modalities, "batches": batches,
           "runs": {}}
    for vs in video_seconds if has_vs else [0.0]:
        extra = {"video_seconds": vs} if has_vs else {}
        cfg = DataConfig(manifest=str(d / "manifest.csv"), num_frames=frames, image_size=side,
                         clip_seconds=secs, audio_frames=audio_frames, num_mel_bins=128, **extra)
        ds = AVDataset(m.records, m.classes, cfg, train=True, two_views=True,
                       modalities=modalities)  # "a": what the audio-only MAT-B recipes load
        ds.set_epoch(1)
        out["runs"][f"video_seconds={vs:g}"] = [_loader_rate(ds, nw, 8, batches)
                                                for nw in workers]
    return out


def _bytes(out: Path) -> int:
    return sum(f.stat().st_size for f in out.glob("train-*.tar"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips-per-class", type=int, default=4)
    ap.add_argument("--passes", type=int, default=2, help="items timed = passes x clips")
    ap.add_argument("--sizes", default="demo,paper")
    ap.add_argument("--vgg-like", type=int, default=4,
                    help="also time N generated VGGSound-shaped clips at the paper size (0 = skip)")
    ap.add_argument("--paper-loader", type=int, default=0,
                    help="time the paper-size training DataLoader on N generated 10-s 640x360 "
                         "clips (0 = skip)")
    ap.add_argument("--loader-batches", type=int, default=6,
                    help="batches timed per setting (a multiple of every worker count)")
    ap.add_argument("--loader-workers", default="0,1,2")
    ap.add_argument("--clip", choices=("testsrc2", "busy"), default="testsrc2",
                    help="--paper-loader's generated clips")
    ap.add_argument("--modalities", choices=("av", "a", "v"), default="av",
                    help="--paper-loader's items: a = audio only (the MAT-B recipes)")
    ap.add_argument("--video-seconds", default="0,2.133",
                    help="data.video_seconds values to time (where the checkout has it)")
    a = ap.parse_args()
    torch.set_num_threads(1)  # what one DataLoader worker gets
    r: dict = {"load_avg_1m_start": round(os.getloadavg()[0], 2)}
    t_all = time.perf_counter()
    sizes = [s for s in a.sizes.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.paper_loader:
            r["paper_loader"] = _paper_loader(
                tmp, a.paper_loader, a.loader_batches,
                [float(x) for x in a.video_seconds.split(",")],
                [int(x) for x in a.loader_workers.split(",")], a.clip, a.modalities)
        if sizes:
            _storages(tmp, a, sizes, r)
        if a.vgg_like:
            r["paper_vgg_like"] = _vgg_like(tmp, a.vgg_like, a.passes)
    r.update(seconds=round(time.perf_counter() - t_all, 1),
             load_avg_1m_end=round(os.getloadavg()[0], 2),
             cpu=_cpu_model(), cpu_count=os.cpu_count(), mmt_core=_checkout(),
             torch_threads=1, note="one process = one DataLoader worker; train-mode items")
    print(json.dumps(r, indent=2))


def _checkout() -> str:
    """Which mmt_core ran (and its git commit): the before/after columns come from two."""
    import mmt_core

    root = Path(mmt_core.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev = "?"
    return f"{root} @ {rev}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _storages(tmp: Path, a, sizes: list[str], r: dict) -> None:
    """Items/s per worker from files, the cache and shards on the built-in dataset."""
    synthetic.write_dataset(tmp / "data", clips_per_class=a.clips_per_class, seed=0,
                            split="train", progress=False, workers=1)
    manifest = tmp / "data" / "manifest.csv"
    m = read_manifest(manifest, split="train")
    n_clips = len(m.records)
    n = a.passes * n_clips
    r.update(clips=n_clips, items_timed=n)
    mp4 = write_shards(manifest, tmp / "mp4", split="train", progress=False)
    r["mp4_shard_bytes_per_sample"] = mp4["bytes"] // mp4["samples"]
    for size in sizes:
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


if __name__ == "__main__":
    main()
