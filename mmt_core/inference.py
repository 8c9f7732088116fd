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

import torch

from . import checkpoint as ckpt

_CACHE: dict[tuple, tuple] = {}  # (resolved dir, weights mtime) -> (model, meta)


def load_for_inference(dir) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on CPU, meta); cached by path, reloaded when the weights change."""
    path = Path(dir).resolve()
    weights = path / ckpt.WEIGHTS
    key = (str(path), weights.stat().st_mtime_ns if weights.is_file() else 0)
    if key not in _CACHE:
        model, meta = ckpt.load_checkpoint(path, "cpu")
        _CACHE.clear()  # one checkpoint set in memory at a time is plenty for the app's three
        _CACHE[key] = (model.eval(), meta)
    return _CACHE[key]


def clip_inputs(clip, meta: dict, modalities: str) -> dict[str, torch.Tensor]:
    """Model inputs of one decoded clip (media.Clip) with a checkpoint's preprocessing, batch 1:
    {"video": (1,3,T,S,S), "audio": (1,1,F,N)}, only the modalities asked for."""
    from .data.features import fbank, normalize
    from .data.transforms import video_eval

    pre = meta["preprocessing"]
    inputs = {}
    if "v" in modalities:
        inputs["video"] = video_eval(clip.frames, pre["image_size"], tuple(pre["video_mean"]),
                                     tuple(pre["video_std"]))[None]  # (1,3,T,S,S)
    if "a" in modalities:
        fb = fbank(torch.from_numpy(clip.audio), clip.sample_rate,
                   num_mel_bins=pre["num_mel_bins"], target_frames=pre["audio_frames"])
        inputs["audio"] = normalize(fb, pre["audio_mean"], pre["audio_std"])[None, None]  # (1,1,F,N)
    return inputs


def prepare_clip(path, meta: dict, views: int = 1) -> dict:
    """Decode `views` evenly spaced windows of `path` and preprocess them like evaluation.

    Returns {"inputs": {"video": (V,3,T,S,S), "audio": (V,1,F,N)} (only what the model takes;
    the batch dimension is the views), "clip": media.Clip of view 0, "has_audio": bool,
    "fbank": (F,N) normalised fbank of view 0, "views": V}. Raises MediaError for a bad file.
    """
    from .data import media

    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    pre = meta["preprocessing"]
    modalities = meta.get("modalities") or "av"
    info = media.probe(path)
    # Frames are decoded even for an audio-only model (the app shows them) unless there are none.
    want_video = "v" in modalities or info.has_video
    per_view, first = [], None
    for i in range(views):
        clip = media.decode(path, num_frames=pre["num_frames"], clip_seconds=pre["clip_seconds"],
                            sample_rate=pre["sample_rate"], view=i, num_views=views,
                            max_seconds=pre.get("max_clip_seconds", 600.0), video=want_video)
        first = first or clip
        per_view.append(clip_inputs(clip, meta, modalities + "a"))  # fbank kept for display
    inputs = {k: torch.cat([v[k] for v in per_view]) for k in per_view[0]
              if k in ("video", "audio") and k[0] in modalities}  # (V,3,T,S,S) / (V,1,F,N)
    return {"inputs": inputs, "clip": first, "has_audio": bool(first.has_audio),
            "fbank": per_view[0]["audio"][0, 0], "views": views}


@torch.inference_mode()
def predict_probs(model: torch.nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    """Per head: class probabilities (C,), the softmax averaged over the views (batch rows)."""
    out = model(**inputs)
    return {h: logits.float().softmax(-1).mean(0) for h, logits in out.head_logits.items()}


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
    probs = predict_probs(model, prep["inputs"])
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
    result["timing"] = {"load_s": round(t1 - t0, 4), "decode_s": round(t2 - t1, 4),
                        "forward_s": round(t3 - t2, 4), "total_s": round(t3 - t0, 4)}
    return result
