"""Inference on one clip: checkpoint → model, file → the tensors it was trained on → top-k.

    from mmt_core.inference import predict_file
    predict_file("clip.mp4", "checkpoints/mmt_tiny", topk=3)

The preprocessing comes from the checkpoint's config.json (frames, size, clip length, mel bins,
normalisation), the same eval path as `mmt eval`: V evenly spaced windows, resize + centre crop,
kaldi fbank, softmax averaged over the views.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
# Re-exported: callers import mmt_core.inference.prepare_clip / clip_inputs.
from .clip_input import clip_inputs, prepare_clip  # noqa: F401

_CACHE: dict[tuple, tuple] = {}  # (resolved dir, weights and pool mtimes) -> (model, meta)


def load_for_inference(dir) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on CPU, meta); cached by path, reloaded when the weights or the
    few-clip pool change."""
    from .fewshot import POOL_FILE

    path = Path(dir).resolve()
    key = (str(path), *(f.stat().st_mtime_ns if f.is_file() else 0
                        for f in (path / ckpt.WEIGHTS, path / POOL_FILE)))
    if key not in _CACHE:
        model, meta = ckpt.load_checkpoint(path, "cpu")
        _CACHE.clear()  # one checkpoint set in memory at a time is plenty for the app's three
        _CACHE[key] = (model.eval(), meta)
    return _CACHE[key]


@torch.inference_mode()
def predict_probs(model: torch.nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    """Per head: class probabilities (C,), the softmax averaged over the views (batch rows)."""
    return _probs_and_embedding(model, inputs)[0]


@torch.inference_mode()
def _probs_and_embedding(model, inputs: dict):
    """(per head: probabilities (C,) averaged over the views, {sense: {feature: (D,)}} OOD
    features (mmt_core.ood.clip_features) of the views' mean) from one forward."""
    from .ood import clip_features, mean_views

    out = model(**inputs)
    probs = {h: logits.float().softmax(-1).mean(0) for h, logits in out.head_logits.items()}
    return probs, mean_views(clip_features(out, inputs))


NO_OOD_NOTE = "no ood.safetensors in the checkpoint: the unlike-the-training-data check is off"


def ood_result(dir, features) -> dict | None:
    """mmt_core.ood.score of a clip's OOD features against DIR/ood.safetensors ({"score",
    "threshold", "ratio", "flagged", "modality", "method", "modalities"}), None without it."""
    from . import ood

    ref = ood.load(dir)
    return None if ref is None else ood.score(features, ref)


def ood_note(res: dict) -> str:
    """The one-line warning of a flagged clip: which sense, how far past the threshold."""
    from . import ood

    return (f"{ood.note(res)}: the predictions are unreliable (detector {res['method']}, "
            "docs/ood.md)")


def predict_file(path, dir, topk: int = 5, views: int | None = None) -> dict:
    """`mmt predict`: per head the top-k labels with probabilities, plus timing."""
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    t0 = time.perf_counter()
    model, meta = load_for_inference(dir)
    t1 = time.perf_counter()
    views = views or meta["preprocessing"].get("test_views") or 1
    prep = prepare_clip(path, meta, views=views)
    t2 = time.perf_counter()
    probs, embedding = _probs_and_embedding(model, prep["inputs"])
    t3 = time.perf_counter()
    predictions = {}
    for head, p in probs.items():
        values, idx = p.topk(min(topk, p.numel()))
        names = meta["classes"][head]
        predictions[head] = [{"label": names[i], "prob": round(float(v), 6)}
                             for v, i in zip(values.tolist(), idx.tolist())]
    result = {"clip": str(path), "checkpoint": str(dir), "model": meta["model"],
              "modalities": meta.get("modalities"), "views": views,
              "predictions": predictions, "has_audio": prep["has_audio"]}
    if not prep["has_audio"]:
        result["note"] = ("the clip has no audio stream: the audio input is silence"
                          if "a" in (meta.get("modalities") or "") else
                          "the clip has no audio stream")
    result["ood"] = ood_result(dir, embedding)
    if result["ood"] is None:
        result["ood_note"] = NO_OOD_NOTE
    elif result["ood"]["flagged"]:
        result["ood_note"] = ood_note(result["ood"])
    if result["ood"] is not None:  # the predictions stay, marked
        result["reliable"] = not result["ood"]["flagged"]
    result["timing"] = {"load_s": round(t1 - t0, 4), "decode_s": round(t2 - t1, 4),
                        "forward_s": round(t3 - t2, 4), "total_s": round(t3 - t0, 4)}
    return result


# ---------------------------------------------------------------- long clips: sliding windows

MAX_WINDOWS = 2000  # refuse a stride that would make more windows than this


def sliding_windows(duration: float, clip_seconds: float, stride: float | None = None
                    ) -> list[float]:
    """Start times of the windows covering [0, duration]: every `stride` seconds (default half a
    window), plus one ending at the clip's end when the last stride falls short of it. A clip no
    longer than one window gets one window at 0."""
    from .errors import UserError

    stride = clip_seconds / 2 if stride is None else float(stride)
    if not stride > 0:
        raise UserError(f"--stride must be > 0 seconds, got {stride:g}")
    if duration <= clip_seconds + 1e-6:
        return [0.0]
    last = duration - clip_seconds
    n = int(np.floor(last / stride + 1e-6)) + 1
    if n > MAX_WINDOWS:
        raise UserError(f"stride {stride:g} s gives {n} windows over {duration:.1f} s; "
                        f"use a stride of at least {last / (MAX_WINDOWS - 1):.2g} s")
    starts = [round(i * stride, 6) for i in range(n)]
    if starts[-1] < last - 1e-3:
        starts.append(round(last, 6))
    return starts


def window_clips(path, meta: dict, stride: float | None = None) -> list:
    """media.Clip of every sliding window of `path`, with a checkpoint's decode settings, decoded
    in one pass (overlapping windows share frames). Raises MediaError for a bad file."""
    from .data import media
    from .data.dataset import decode_short_side

    pre = meta["preprocessing"]
    info = media.probe(path)
    if not info.has_video:
        raise media.MediaError(f"no video stream in {path}")
    starts = sliding_windows(info.duration, pre["clip_seconds"], stride)
    return media.decode_windows(path, starts, num_frames=pre["num_frames"],
                                clip_seconds=pre["clip_seconds"], sample_rate=pre["sample_rate"],
                                max_seconds=pre.get("max_clip_seconds", 600.0),
                                short_side=decode_short_side(pre["image_size"]))


@torch.inference_mode()
def window_probs(model: torch.nn.Module, meta: dict, clips: list, batch_size: int = 8, *,
                 embeddings: bool = False):
    """(K, C) class probabilities of the first head for K window clips, batched; with
    `embeddings`, also {sense: {feature: (K, D)}} OOD features (mmt_core.ood.clip_features)."""
    from .ood import clip_features

    modalities = meta.get("modalities") or getattr(model, "modalities", "av")
    head = next(iter(meta["classes"]))
    rows, embs = [], {}
    for i in range(0, len(clips), batch_size):
        per = [clip_inputs(c, meta, modalities) for c in clips[i:i + batch_size]]
        inputs = {k: torch.cat([x[k] for x in per]) for k in per[0]}  # (B, ...)
        out = model(**inputs)
        rows.append(out.head_logits[head].float().softmax(-1).numpy())
        for s, fs in clip_features(out, inputs).items() if embeddings else ():
            for f, x in fs.items():
                embs.setdefault(s, {}).setdefault(f, []).append(x)
    probs = np.concatenate(rows)
    return (probs, {s: {f: np.concatenate(v) for f, v in fs.items()} for s, fs in embs.items()}
            ) if embeddings else probs


def windows_table(clips: list, probs: np.ndarray, class_names: list[str], topk: int = 3
                  ) -> list[dict]:
    """[{start, end, top: [{label, prob}, ...]}, ...] of windows and their (K, C) probabilities."""
    out = []
    for clip, p in zip(clips, probs):
        order = np.argsort(-p)[:topk]
        end = min(clip.duration, clip.start + len(clip.audio) / clip.sample_rate)
        out.append({"start": round(float(clip.start), 3), "end": round(float(end), 3),
                    "top": [{"label": class_names[i], "prob": round(float(p[i]), 6)}
                            for i in order]})
    return out


def predict_windows(path, dir, *, stride: float | None = None, topk: int = 3) -> dict:
    """`mmt predict CLIP --windows`: top-k of every sliding window over the clip, and each
    window's "unlike the training data" check (`ood`, as `predict_file`'s; None without a
    reference in the checkpoint)."""
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    t0 = time.perf_counter()
    model, meta = load_for_inference(dir)
    clips = window_clips(path, meta, stride)
    probs, embs = window_probs(model, meta, clips, embeddings=True)
    pre = meta["preprocessing"]
    result = {"clip": str(path), "checkpoint": str(dir), "model": meta["model"],
              "modalities": meta.get("modalities"), "duration": round(clips[0].duration, 3),
              "window_seconds": pre["clip_seconds"],
              "stride_seconds": pre["clip_seconds"] / 2 if stride is None else float(stride),
              "has_audio": bool(clips[0].has_audio),
              "windows": windows_table(clips, probs, meta["classes"][next(iter(meta["classes"]))],
                                       topk)}
    from . import ood

    ref = ood.load(dir)
    for k, w in enumerate(result["windows"]):  # each window against the OOD reference
        w["ood"] = None if ref is None else ood.score(
            {s: {f: x[k] for f, x in fs.items()} for s, fs in embs.items()}, ref)
    if ref is None:
        result["ood_note"] = NO_OOD_NOTE
    else:
        result["ood_flagged_windows"] = sum(w["ood"]["flagged"] for w in result["windows"])
    result["timing"] = {"total_s": round(time.perf_counter() - t0, 4)}
    return result
