"""Log-mel filter banks (the AST / CAV-MAE front end) and their dataset normalisation stats."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torchaudio

from ..atomic import write_json
from ..errors import UserError

WINDOW_MS = 25.0  # kaldi default frame length
SHIFT_MS = 10.0  # frame shift: 100 fbank frames per second


def fbank(waveform: torch.Tensor | np.ndarray, sample_rate: int = 16000, num_mel_bins: int = 128,
          target_frames: int | None = 1024) -> torch.Tensor:
    """Kaldi log-mel fbank of a mono waveform (S,), cut or zero-padded to target_frames -> (F, N).

    Exactly the peers' call (waveform mean removed, htk_compat, hanning window, no dither, 10 ms
    shift). target_frames=None keeps every frame (used for stats and caches).
    """
    w = torch.as_tensor(waveform, dtype=torch.float32)
    if w.dim() == 2 and w.shape[0] == 1:
        w = w[0]
    if w.dim() != 1:
        raise ValueError(f"fbank expects a mono waveform (S,), got shape {tuple(w.shape)}")
    min_len = int(sample_rate * WINDOW_MS / 1000)
    if w.numel() < min_len:  # kaldi needs one full window; pad very short clips with silence
        w = torch.nn.functional.pad(w, (0, min_len - w.numel()))
    w = (w - w.mean()).unsqueeze(0)  # (1, S)
    fb = torchaudio.compliance.kaldi.fbank(
        w, htk_compat=True, sample_frequency=sample_rate, use_energy=False,
        window_type="hanning", num_mel_bins=num_mel_bins, dither=0.0, frame_shift=SHIFT_MS)
    if target_frames is not None:  # (N, F): cut or zero-pad along time, as AST does
        n = fb.shape[0]
        if n < target_frames:
            fb = torch.nn.functional.pad(fb, (0, 0, 0, target_frames - n))
        else:
            fb = fb[:target_frames]
    return fb.t().contiguous()  # (F, N) mel x time


@contextlib.contextmanager
def one_thread():
    """Run small per-clip torch ops on one thread: on a busy CPU, OpenMP's spinning makes the
    fbank of one clip ~10x slower with 2 threads than with 1 (measured here: 125 ms vs 13 ms)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def normalize(fb: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """AST normalisation: (x - mean) / (2 * std)."""
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std}")
    return (fb - mean) / (2.0 * std)


def dataset_stats(manifest: str, split: str | None = "train", limit: int = 0, format: str = "auto",
                  progress: bool = True, root: str = "", sample_rate: int = 16000,
                  num_mel_bins: int = 128, max_seconds: float = 10.0) -> dict:
    """Mean and std of the fbank values of a manifest split (the first max_seconds of each clip).

    Padding is left out (only real frames count). Clips that fail to decode are skipped and
    counted. The numbers go into data.audio_mean / data.audio_std of a recipe.
    """
    from .manifests import read_manifest

    if limit < 0:
        raise UserError(f"--limit must be >= 0, got {limit}")
    m = read_manifest(manifest, format=format, root=root, split=split or None)
    records = m.records[:limit] if limit else m.records
    if not records:
        raise UserError(f"no clips in split '{split}' of {manifest}")
    with one_thread():
        s1, s2, total, clips, skipped = _accumulate(records, sample_rate, num_mel_bins, max_seconds,
                                                    progress)
    if clips == 0:
        raise UserError(f"none of the {len(records)} clips of split '{split}' could be decoded")
    mean = s1 / total
    std = math.sqrt(max(0.0, s2 / total - mean * mean))
    return {"mean": mean, "std": std, "clips": clips, "skipped": skipped,
            "manifest": str(manifest), "split": split}


def _accumulate(records, sample_rate, num_mel_bins, max_seconds, progress):
    """Sum, sum of squares and count of the fbank values of records; clips ok; clips skipped."""
    from .media import decode, probe

    total, s1, s2, clips, skipped = 0, 0.0, 0.0, 0, 0
    for k, rec in enumerate(records):
        try:
            dur = probe(rec.path).duration
            start = rec.start or 0.0
            end = rec.end if rec.end is not None else dur
            secs = max(0.01, min(max_seconds, end - start))
            clip = decode(rec.path, num_frames=1, clip_seconds=secs, sample_rate=sample_rate,
                          start=start, video=False)
        except UserError:
            skipped += 1
            continue
        fb = fbank(clip.audio, sample_rate, num_mel_bins, target_frames=None).double()
        total += fb.numel()
        s1 += float(fb.sum())
        s2 += float((fb * fb).sum())
        clips += 1
        if progress:
            print(f"\rmmt stats: {k + 1}/{len(records)} clips", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return s1, s2, total, clips, skipped


def stats_cache_dir() -> Path:
    """Where computed statistics are kept: $MMT_CACHE/stats (default ~/.cache/mmt/stats)."""
    root = os.environ.get("MMT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mmt")
    return Path(root) / "stats"


def cached_dataset_stats(manifest: str, split: str = "train", *, progress: bool = True,
                         sample_rate: int = 16000, num_mel_bins: int = 128,
                         max_seconds: float = 10.0) -> dict:
    """dataset_stats of a plain manifest split, cached under stats_cache_dir() by the content of
    that split (its rows, each file's size and mtime) and the fbank settings. The result has
    "cached": True when it came from the cache."""
    from .manifests import read_manifest

    m = read_manifest(manifest, split=split)
    h = hashlib.sha256(json.dumps([sample_rate, num_mel_bins, max_seconds]).encode())
    for r in sorted(m.records, key=lambda r: (r.path, r.start or 0.0)):
        try:
            st = os.stat(r.path)
            sig = (st.st_size, st.st_mtime_ns)
        except OSError:
            sig = None
        h.update(json.dumps([r.path, r.start, r.end, sig]).encode())
    f = stats_cache_dir() / f"{h.hexdigest()[:32]}.json"
    if f.is_file():
        try:
            return {**json.loads(f.read_text()), "cached": True}
        except (OSError, ValueError):
            pass  # unreadable: recompute and overwrite
    res = dataset_stats(str(manifest), split=split, progress=progress, sample_rate=sample_rate,
                        num_mel_bins=num_mel_bins, max_seconds=max_seconds)
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        write_json(f, res)
    except OSError:
        pass  # a read-only home: the statistics are still returned, only not kept
    return {**res, "cached": False}
