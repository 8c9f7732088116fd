"""AVDataset: manifest records -> model-ready tensors; collate_skip_broken for the DataLoader.

One item = decode a window (or read it from the cache) -> fbank -> SpecAugment (train) ->
normalise, and frames -> crop/flip (train) or resize/centre-crop (eval) -> uint8 (3,T,S,S),
which `evaluation.model_inputs` normalises on the device. Every random choice comes from a
Generator seeded by (seed, epoch, index): any worker, any order, a resumed run sees the same
item. A clip that cannot be decoded gives None; the collate function drops it and counts it
(with its path when the DataLoader batches through __getitems__).
"""
from __future__ import annotations

import logging

import av
import numpy as np
import torch

from ..errors import ConfigError, MediaError
from . import features, transforms
from .manifests import ClipRecord
from .media import decode, decode_views

log = logging.getLogger(__name__)


def decode_short_side(image_size: int) -> int:
    """Frames wider than this are downscaled while decoding (SlowFast's 256-320 short side for
    224 crops); small media such as the built-in 128x128 clips are never rescaled."""
    return max(256, round(1.25 * image_size))


class Batch(list):
    """A list of items (None = broken) that remembers the paths of the broken ones."""

    skipped_paths: list[str]


class AVDataset(torch.utils.data.Dataset):
    """Items {"video": uint8 (3,T,S,S), "audio": (1,F,N), "labels": {head: int}, "has_audio",
    "index"}.

    num_views > 1 stacks V test views: (V,3,T,S,S) and (V,1,F,N) (docs/data.md, "Windows and
    test views": with data.video_seconds the video windows differ and the audio repeats).
    two_views adds "video2"/"audio2" for IMC: the same decode, its own video window (with
    video_seconds) and its own augmentation.
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
        if data_cfg.cache_dir and data_cfg.video_seconds > 0:
            raise ConfigError("data.video_seconds > 0 needs decoding on the fly (files or mp4 "
                              "shards): the frame cache samples whole windows; unset cache_dir")
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
        """The epoch of plain-index access (ds[i], load(i), non-persistent workers); a loader
        with persistent workers passes (epoch, index) keys instead (EpochSampler)."""
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

    def _raw(self, rec: ClipRecord, rng, n: int, source=None) -> tuple[list, list, bool]:
        """(frames per view: uint8 (T,H,W,3) | None, fbank per view: (F,N) | None, has_audio)
        of n views: n = 1 + two_views in training (one decode, augmented n times), num_views at
        test. Views that share one audio window hold the same fbank object (computed once).

        source: None = rec.path (or the cache); a file-like = the media's bytes (a shard member,
        with rec.start/end relative to it); a tuple (frames, fbank, has_audio) = that window,
        already decoded (a `--decoded` shard: one stored window, so one test view).
        """
        cfg = self.cfg
        want_v, want_a = "v" in self.modalities, "a" in self.modalities
        spread = not self.train and n > 1 and cfg.video_seconds <= 0  # views = own A+V windows
        if isinstance(source, tuple):
            if not self.train and n != 1:
                raise ValueError(f"a decoded sample holds one window, not {n} views")
            frames, fb, has_audio = source
            return [frames if want_v else None] * n, [fb if want_a else None] * n, has_audio
        reader = self._cache_reader() if source is None else None
        hit = reader.lookup(rec) if reader is not None else None
        if hit is not None:
            win = dict(num_frames=cfg.num_frames, clip_seconds=cfg.clip_seconds,
                       target_frames=cfg.audio_frames, video=want_v, audio=want_a)
            if spread:
                wins = [reader.window(hit, view=v, num_views=n, **win) for v in range(n)]
            else:  # one window read, augmented n times
                wins = [reader.window(hit, view=None if self.train else 0, num_views=1,
                                      rng=rng if self.train else None, **win)] * n
            return ([w[0] if want_v else None for w in wins],
                    [w[1] if want_a else None for w in wins], wins[0][2])
        common = dict(num_frames=cfg.num_frames, clip_seconds=cfg.clip_seconds,
                      sample_rate=cfg.sample_rate, start=rec.start, end=rec.end,
                      max_seconds=cfg.max_clip_seconds, video=want_v, audio=want_a,
                      short_side=decode_short_side(cfg.image_size))
        if spread:  # video_seconds = 0: each test view its own clip_seconds window (as before)
            clips = []
            for v in range(n):
                if source is not None:
                    source.seek(0)  # the same bytes serve every view
                clips.append(decode(rec.path if source is None else source, view=v,
                                    num_views=n, **common))
        else:  # one audio window; the video windows inside it (one pass)
            if source is not None:
                source.seek(0)
            clips = decode_views(rec.path if source is None else source,
                                 video_seconds=cfg.video_seconds, num_views=n,
                                 rng=rng if self.train else None, **common)
        fbs: dict[int, torch.Tensor] = {}  # id(audio array) -> fbank: shared windows once
        for c in clips:
            if want_a and id(c.audio) not in fbs:
                fbs[id(c.audio)] = features.fbank(c.audio, c.sample_rate, cfg.num_mel_bins,
                                                  cfg.audio_frames)
        return ([c.frames if want_v else None for c in clips],
                [fbs[id(c.audio)] if want_a else None for c in clips], clips[0].has_audio)

    def _video(self, frames, rng) -> torch.Tensor:
        """uint8 (3, T, S, S): normalised on the device (evaluation.model_inputs)."""
        cfg = self.cfg
        if self.train:
            return transforms.video_train_uint8(frames, cfg.image_size, tuple(cfg.train_scale),
                                                cfg.hflip, rng)
        return transforms.video_eval_uint8(frames, cfg.image_size)

    def _audio(self, fb, rng) -> torch.Tensor:
        """(1, F, N) normalised fbank (SpecAugment first in training, as AST)."""
        cfg = self.cfg
        if self.train and (cfg.freq_mask > 0 or cfg.time_mask > 0):
            fb = transforms.spec_augment(fb, cfg.freq_mask, cfg.time_mask, rng)
        return features.normalize(fb, cfg.audio_mean, cfg.audio_std).unsqueeze(0)  # (1, F, N)

    # ------------------------------------------------------------------ items
    def make_item(self, rec: ClipRecord, rng: np.random.Generator, index: int,
                  source=None) -> dict:
        """The one per-sample function of every storage: a record (labels, segment) and its media
        -> the item dict. `source` as in `_raw`: None (file or cache), in-memory bytes
        (a shard's mp4) or decoded arrays (a `--decoded` shard). Raises MediaError when broken."""
        n = (1 + self.two_views) if self.train else self.num_views
        frames, fbs, has_audio = self._raw(rec, rng, n, source)
        views = []
        for v in range(n):  # per view: crop/flip, then SpecAugment (the RNG order of a resume)
            out = {}
            if frames[v] is not None:
                out["video"] = self._video(frames[v], rng)
            if fbs[v] is not None:  # a test view sharing view 0's audio shares its tensor
                same = not self.train and v > 0 and fbs[v] is fbs[0]
                out["audio"] = views[0]["audio"] if same else self._audio(fbs[v], rng)
            views.append(out)
        if self.train or n == 1:
            item = views[0]
        else:
            item = {k: torch.stack([v[k] for v in views]) for k in views[0]}  # (V, ...)
        if self.two_views:  # training: the second augmentation; eval: view 0 again
            second = views[1] if self.train else views[0]
            item.update({f"{k}2": x for k, x in second.items()})
        item["labels"] = dict(rec.labels)
        item["has_audio"] = bool(has_audio)
        item["index"] = index
        return item

    def load(self, index: int, epoch: int | None = None) -> dict:
        """The item (of `epoch`, default the last set_epoch), raising MediaError for a broken
        clip (__getitem__ returns None for those)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, index])
        return self.make_item(self.records[index], rng, index)

    def __getitem__(self, key) -> dict | None:
        """key: an index, or (epoch, index) from `EpochSampler` (persistent workers keep their
        own copy of the dataset, so set_epoch in the main process does not reach them)."""
        epoch, index = key if isinstance(key, tuple) else (None, key)
        try:
            return self.load(index, epoch)
        except (MediaError, av.error.FFmpegError, OSError) as e:  # config errors propagate
            log.debug("broken clip %s: %s", self.records[index].path, e)
            return None

    def __getitems__(self, keys: list) -> Batch:
        """Batched fetch used by the DataLoader: remembers which paths were broken."""
        batch = Batch(self[k] for k in keys)
        batch.skipped_paths = [self.records[k[1] if isinstance(k, tuple) else k].path
                               for k, x in zip(keys, batch) if x is None]
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
