"""Decode a split once into memory-mappable shards; AVDataset samples windows from them.

Per split, three files in the cache directory:
  {split}_frames.npy  uint8 (sum of frames, side, side, 3): every clip at `fps`, short side
                      resized to `side`, centre-cropped square (a bit larger than image_size, so
                      random crops still have room)
  {split}_fbank.npy   float16 (sum of fbank frames, F): the fbank of each clip's whole audio
  {split}_index.json  per clip: path/start/end key, offsets, counts, frame step, has_audio
Random windows, crops, flips and SpecAugment still apply when reading, so training sees the same
kind of data as with on-the-fly decoding; only the frame times are quantised to the cache fps and
the fbank of a window is cut from the whole-clip fbank (per-window DC removal is not redone).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_json
from ..errors import ConfigError, UserError
from . import features
from .manifests import ClipRecord, read_manifest
from .media import MAX_FRAMES, choose_window, decode, probe
from .transforms import _resize

FBANK_RATE = 100  # fbank frames per second (10 ms shift)
_WIN, _HOP = 400, 160  # kaldi window / shift in samples at 16 kHz


def cache_key(rec: ClipRecord) -> str:
    return f"{os.path.abspath(rec.path)}|{rec.start}|{rec.end}"


def _fbank_frames(samples: int, sample_rate: int) -> int:
    win, hop = int(sample_rate * 0.025), int(sample_rate * 0.010)
    return 1 + (max(samples, win) - win) // hop


def _square(frames: np.ndarray, side: int) -> np.ndarray:
    """uint8 (T,H,W,3) -> short side `side`, centre square crop, uint8 (T,side,side,3)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    h, w = x.shape[2:]
    nh, nw = (side, max(side, round(w * side / h))) if h <= w else (max(side, round(h * side / w)), side)
    x = _resize(x, nh, nw)
    t, l = (nh - side) // 2, (nw - side) // 2
    x = x[:, :, t:t + side, l:l + side].round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()  # (T, side, side, 3)


def cache_geometry(data_cfg) -> tuple[float, int]:
    """(fps, side) of the cached frames for a DataConfig: 4 frames per sampled frame interval,
    and a square a bit larger than image_size so random crops still have room."""
    fps = float(min(25.0, max(4.0, 4 * data_cfg.num_frames / data_cfg.clip_seconds)))
    return fps, int(2 * round(data_cfg.image_size * 8 / 7 / 2))  # 224 -> 256, 112 -> 128


def build_cache(data_cfg, out_dir: str | Path, split: str = "train", progress: bool = True,
                fps: float | None = None, side: int | None = None) -> dict:
    """Decode every clip of `split` of data_cfg.manifest once into out_dir (see module doc)."""
    cfg = data_cfg
    if not cfg.manifest:
        raise UserError("data.manifest is empty: set it in the recipe or with --set data.manifest=...")
    fps, side = float(fps or cache_geometry(cfg)[0]), int(side or cache_geometry(cfg)[1])
    m = read_manifest(cfg.manifest, format=cfg.format, root=cfg.root, split=split)
    if not m.records:
        raise UserError(f"no clips in split '{split}' of {cfg.manifest}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create cache dir {out}: {e.strerror}") from None
    t0 = time.monotonic()
    plan, skipped = [], []
    for rec in m.records:  # pass 1: sizes, so the shards can be preallocated as memmaps
        try:
            dur = probe(rec.path).duration
        except UserError as e:
            skipped.append({"path": rec.path, "error": str(e)})
            continue
        s = rec.start or 0.0
        seconds = min(dur, rec.end if rec.end is not None else dur) - s
        if seconds <= 0:
            skipped.append({"path": rec.path, "error": "empty segment"})
            continue
        seconds = min(seconds, cfg.max_clip_seconds)
        n = min(MAX_FRAMES, max(1, math.ceil(seconds * fps - 1e-6)))
        plan.append((rec, seconds, n, _fbank_frames(round(seconds * cfg.sample_rate), cfg.sample_rate)))
    if not plan:
        raise UserError(f"none of the {len(m.records)} clips of split '{split}' could be opened")
    fr_path, fb_path = out / f"{split}_frames.npy", out / f"{split}_fbank.npy"
    frames = np.lib.format.open_memmap(fr_path, mode="w+", dtype=np.uint8,
                                       shape=(sum(p[2] for p in plan), side, side, 3))
    fbank = np.lib.format.open_memmap(fb_path, mode="w+", dtype=np.float16,
                                      shape=(sum(p[3] for p in plan), cfg.num_mel_bins))
    with features.one_thread():
        clips = _fill(plan, frames, fbank, cfg, side, skipped, progress)
    frames.flush()
    fbank.flush()
    del frames, fbank
    index = {"version": 1, "split": split, "fps": fps, "side": side, "sample_rate": cfg.sample_rate,
             "num_mel_bins": cfg.num_mel_bins, "frames_file": fr_path.name,
             "fbank_file": fb_path.name, "clips": clips, "skipped": skipped}
    write_json(out / f"{split}_index.json", index)
    secs = time.monotonic() - t0
    return {"out_dir": str(out), "split": split, "clips": len(clips), "skipped": len(skipped),
            "fps": fps, "side": side, "bytes": fr_path.stat().st_size + fb_path.stat().st_size,
            "seconds": round(secs, 2), "clips_per_s": round(len(clips) / max(secs, 1e-9), 2)}


def _fill(plan, frames, fbank, cfg, side, skipped, progress) -> list[dict]:
    """Pass 2: decode each planned clip once into its slots of the shards."""
    clips, fo, bo = [], 0, 0
    for k, (rec, seconds, n, nb) in enumerate(plan):
        try:
            clip = decode(rec.path, num_frames=n, clip_seconds=seconds, sample_rate=cfg.sample_rate,
                          start=rec.start or 0.0, end=(rec.start or 0.0) + seconds,
                          max_seconds=cfg.max_clip_seconds)
        except UserError as e:
            skipped.append({"path": rec.path, "error": str(e)})
        else:
            frames[fo:fo + n] = _square(clip.frames, side)
            fb = features.fbank(clip.audio, cfg.sample_rate, cfg.num_mel_bins, target_frames=None)
            fbank[bo:bo + nb] = fb.t()[:nb].numpy().astype(np.float16)  # (nb, F)
            clips.append({"key": cache_key(rec), "frame_offset": fo, "frames": n,
                          "frame_step": seconds / n, "fbank_offset": bo, "fbank_frames": nb,
                          "seconds": seconds, "has_audio": bool(clip.has_audio)})
        fo, bo = fo + n, bo + nb
        if progress:
            print(f"\rmmt cache: {k + 1}/{len(plan)} clips", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return clips


class CacheReader:
    """Looks records up in every {split}_index.json of a cache dir and cuts windows from the shards."""

    def __init__(self, cache_dir: str | Path, *, sample_rate: int | None = None,
                 num_mel_bins: int | None = None):
        d = Path(cache_dir)
        if not d.is_dir():
            raise ConfigError(f"data.cache_dir does not exist: {d} (build it with `mmt cache`)")
        self.entries: dict[str, tuple[dict, dict]] = {}
        self._arrays: dict[str, np.ndarray] = {}
        for f in sorted(d.glob("*_index.json")):
            idx = json.loads(f.read_text())
            idx["dir"] = str(d)
            for key, want in (("sample_rate", sample_rate), ("num_mel_bins", num_mel_bins)):
                if want is not None and idx[key] != want:
                    raise ConfigError(f"cache {f} was built with {key}={idx[key]}, the config says "
                                      f"{want}: rebuild it with `mmt cache`")
            for c in idx["clips"]:
                self.entries[c["key"]] = (idx, c)
        self._silence: dict[int, float] = {}

    def lookup(self, rec: ClipRecord):
        return self.entries.get(cache_key(rec))

    def _array(self, idx: dict, which: str) -> np.ndarray:
        name = idx[which]
        if name not in self._arrays:
            self._arrays[name] = np.load(Path(idx["dir"]) / name, mmap_mode="r")
        return self._arrays[name]

    def _silence_value(self, sr: int, bins: int) -> float:
        """The fbank value of digital silence (kaldi's log floor), used past the clip's end."""
        if bins not in self._silence:
            self._silence[bins] = float(features.fbank(np.zeros(sr // 10), sr, bins, None)[0, 0])
        return self._silence[bins]

    def window(self, hit, *, num_frames: int, clip_seconds: float, target_frames: int,
               view=None, num_views: int = 1, rng=None, video: bool = True, audio: bool = True):
        """(frames uint8 (T,S,S,3) | None, fbank (F, target_frames) | None, has_audio)."""
        idx, c = hit
        w0, w1 = choose_window(c["seconds"], clip_seconds, view=view, num_views=num_views, rng=rng)
        frames = fb = None
        if video:
            times = w0 + (np.arange(num_frames) + 0.5) * (w1 - w0) / num_frames
            k = np.clip(np.floor(times / c["frame_step"]).astype(int), 0, c["frames"] - 1)
            frames = np.asarray(self._array(idx, "frames_file")[c["frame_offset"] + k])
        if audio:
            sr, bins = idx["sample_rate"], idx["num_mel_bins"]
            whole = _fbank_frames(round(clip_seconds * sr), sr)  # frames decode+fbank would give
            a = int(round(w0 * FBANK_RATE))
            real = max(0, min(c["fbank_frames"] - a, int(round((w1 - w0) * FBANK_RATE)), whole))
            out = torch.zeros(target_frames, bins)
            out[:min(whole, target_frames)] = self._silence_value(sr, bins)
            src = self._array(idx, "fbank_file")[c["fbank_offset"] + a:c["fbank_offset"] + a + real]
            n = min(real, target_frames)
            out[:n] = torch.from_numpy(np.asarray(src[:n], dtype=np.float32))
            fb = out.t().contiguous()  # (F, N)
        return frames, fb, c["has_audio"]
