"""AVDataset: manifest records -> model-ready tensors; collate_skip_broken for the DataLoader.

One item = decode a window (or read it from the cache) -> fbank -> SpecAugment (train) ->
normalise, and frames -> crop/flip (train) or resize/centre-crop (eval) -> normalise. Every random
choice comes from a Generator seeded by (seed, epoch, index): any worker, any order, a resumed run
sees the same item. A clip that cannot be decoded gives None; the collate function drops it and
counts it (with its path when the DataLoader batches through __getitems__).
"""
from __future__ import annotations

import logging

import av
import numpy as np
import torch

from ..errors import MediaError
from . import features, transforms
from .manifests import ClipRecord
from .media import decode

log = logging.getLogger(__name__)


def decode_short_side(image_size: int) -> int:
    """Frames wider than this are downscaled while decoding (SlowFast's 256-320 short side for
    224 crops); small media such as the built-in 128x128 clips are never rescaled."""
    return max(256, round(1.25 * image_size))


class Batch(list):
    """A list of items (None = broken) that remembers the paths of the broken ones."""

    skipped_paths: list[str]


class AVDataset(torch.utils.data.Dataset):
    """Items {"video": (3,T,S,S), "audio": (1,F,N), "labels": {head: int}, "has_audio", "index"}.

    num_views > 1 stacks V evenly spaced windows: (V,3,T,S,S) and (V,1,F,N). two_views adds
    "video2"/"audio2": another random window with independent augmentation (for IMC).
    modalities "a" / "v" skip decoding the other stream; the item then has only the keys needed
    ("audio" or "video"), never zero placeholders.
    """

    def __init__(self, records: list[ClipRecord], classes: dict[str, list[str]], data_cfg, *,
                 train: bool, two_views: bool = False, num_views: int = 1, modalities: str = "av",
                 seed: int = 0):
        if modalities not in ("av", "a", "v"):
            raise ValueError(f"modalities must be 'av', 'a' or 'v', got {modalities!r}")
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.records = list(records)
        self.classes = classes
        self.cfg = data_cfg
        self.train = train
        self.two_views = two_views
        self.num_views = num_views
        self.modalities = modalities
        self.seed = seed
        self.epoch = 0
        self._cache = None  # opened lazily in each worker (memmaps do not pickle well)

    def __getstate__(self) -> dict:  # workers reopen the memmaps instead of copying them
        return {**self.__dict__, "_cache": None}

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch (with non-persistent workers) so augmentation changes per epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    # ------------------------------------------------------------------ raw windows
    def _cache_reader(self):
        if self._cache is None and self.cfg.cache_dir:
            from .cache import CacheReader

            self._cache = CacheReader(self.cfg.cache_dir, sample_rate=self.cfg.sample_rate,
                                      num_mel_bins=self.cfg.num_mel_bins)
        return self._cache

    def _window(self, rec: ClipRecord, rng, view: int | None, num_views: int, source=None):
        """(frames uint8 (T,H,W,3) | None, fbank (F,N) | None, has_audio) of one window.

        source: None = rec.path (or the cache); a file-like = the media's bytes (a shard member,
        with rec.start/end relative to it); a tuple (frames, fbank, has_audio) = that window,
        already decoded (a `--decoded` shard: one stored window, so only view 0 of 1).
        """
        cfg = self.cfg
        want_v, want_a = "v" in self.modalities, "a" in self.modalities
        if isinstance(source, tuple):
            if num_views != 1:
                raise ValueError(f"a decoded sample holds one window, not {num_views} views")
            frames, fb, has_audio = source
            return (frames if want_v else None), (fb if want_a else None), has_audio
        reader = self._cache_reader() if source is None else None
        hit = reader.lookup(rec) if reader is not None else None
        if hit is not None:
            return reader.window(hit, num_frames=cfg.num_frames, clip_seconds=cfg.clip_seconds,
                                 target_frames=cfg.audio_frames, view=view, num_views=num_views,
                                 rng=None if view is not None else rng, video=want_v, audio=want_a)
        if source is not None:
            source.seek(0)  # the same bytes serve several windows (views, the IMC second view)
        clip = decode(rec.path if source is None else source, num_frames=cfg.num_frames,
                      clip_seconds=cfg.clip_seconds,
                      sample_rate=cfg.sample_rate, start=rec.start, end=rec.end, view=view,
                      num_views=num_views, rng=None if view is not None else rng,
                      max_seconds=cfg.max_clip_seconds, video=want_v, audio=want_a,
                      short_side=decode_short_side(cfg.image_size))
        fb = None
        if want_a:
            fb = features.fbank(clip.audio, clip.sample_rate, cfg.num_mel_bins, cfg.audio_frames)
        return (clip.frames if want_v else None), fb, clip.has_audio

    def _tensors(self, frames, fb, rng) -> dict:
        cfg, out = self.cfg, {}
        if frames is not None:
            if self.train:
                out["video"] = transforms.video_train(frames, cfg.image_size, tuple(cfg.train_scale),
                                                      cfg.hflip, cfg.video_mean, cfg.video_std, rng)
            else:
                out["video"] = transforms.video_eval(frames, cfg.image_size, cfg.video_mean, cfg.video_std)
        if fb is not None:
            if self.train and (cfg.freq_mask > 0 or cfg.time_mask > 0):
                fb = transforms.spec_augment(fb, cfg.freq_mask, cfg.time_mask, rng)  # before norm (AST)
            out["audio"] = features.normalize(fb, cfg.audio_mean, cfg.audio_std).unsqueeze(0)  # (1, F, N)
        return out

    def _view(self, rec, rng, view=None, num_views=1, source=None) -> tuple[dict, bool]:
        frames, fb, has_audio = self._window(rec, rng, view, num_views, source)
        return self._tensors(frames, fb, rng), has_audio

    # ------------------------------------------------------------------ items
    def make_item(self, rec: ClipRecord, rng: np.random.Generator, index: int,
                  source=None) -> dict:
        """The one per-sample function of every storage: a record (labels, segment) and its media
        -> the item dict. `source` as in `_window`: None (file or cache), in-memory bytes
        (a shard's mp4) or decoded arrays (a `--decoded` shard). Raises MediaError when broken."""
        if self.train or self.num_views == 1:
            view = None if self.train else 0
            item, has_audio = self._view(rec, rng, view, 1, source)
        else:
            views = [self._view(rec, rng, v, self.num_views, source) for v in range(self.num_views)]
            has_audio = views[0][1]
            item = {k: torch.stack([v[0][k] for v in views]) for k in views[0][0]}  # (V, ...)
        if self.two_views:
            second, _ = self._view(rec, rng, None if self.train else 0, 1, source)
            item.update({f"{k}2": v for k, v in second.items()})
        item["labels"] = dict(rec.labels)
        item["has_audio"] = bool(has_audio)
        item["index"] = index
        return item

    def load(self, index: int) -> dict:
        """The item, raising MediaError for a broken clip (__getitem__ returns None for those)."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return self.make_item(self.records[index], rng, index)

    def __getitem__(self, index: int) -> dict | None:
        try:
            return self.load(index)
        except (MediaError, av.error.FFmpegError, OSError) as e:  # config errors propagate
            log.debug("broken clip %s: %s", self.records[index].path, e)
            return None

    def __getitems__(self, indices: list[int]) -> Batch:
        """Batched fetch used by the DataLoader: remembers which paths were broken."""
        batch = Batch(self[i] for i in indices)
        batch.skipped_paths = [self.records[i].path for i, x in zip(indices, batch) if x is None]
        return batch


def collate_skip_broken(items: list) -> dict:
    """Stack the non-None items; add "skipped" (count) and "skipped_paths".

    A broken item is None (map-style datasets) or {"broken": path} (streamed shards, which
    cannot attach paths to the batch list).

    An all-broken batch has the skip keys, "labels" {} and an empty "index" (the engine skips it).
    """
    good = [x for x in items if x is not None and "broken" not in x]
    out: dict = {"skipped": len(items) - len(good),
                 "skipped_paths": list(getattr(items, "skipped_paths", [])) +
                 [x["broken"] for x in items if x is not None and "broken" in x]}
    if not good:
        out.update(labels={}, index=torch.zeros(0, dtype=torch.long))
        return out
    for key in ("video", "audio", "video2", "audio2"):
        if key in good[0]:
            out[key] = torch.stack([x[key] for x in good])
    out["labels"] = {h: torch.tensor([x["labels"][h] for x in good], dtype=torch.long)
                     for h in good[0]["labels"]}
    out["has_audio"] = torch.tensor([x["has_audio"] for x in good], dtype=torch.bool)
    out["index"] = torch.tensor([x["index"] for x in good], dtype=torch.long)
    return out
