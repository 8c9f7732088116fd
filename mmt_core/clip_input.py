"""A clip file → the model inputs of a checkpoint's evaluation preprocessing (decode the views,
resize + centre crop the frames, kaldi fbank of the audio). Both inference (`mmt predict`) and
ood (featurising clips) use it; it imports neither, so they need not import each other.
"""
from __future__ import annotations

import torch


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
    common = dict(num_frames=pre["num_frames"], clip_seconds=pre["clip_seconds"],
                  sample_rate=pre["sample_rate"], max_seconds=pre.get("max_clip_seconds", 600.0),
                  video=want_video)
    if pre.get("video_seconds", 0.0) > 0:  # one audio window, the video windows inside it
        clips = media.decode_views(path, video_seconds=pre["video_seconds"], num_views=views,
                                   **common)
    else:
        clips = [media.decode(path, view=i, num_views=views, **common) for i in range(views)]
    first = clips[0]
    per_view = [clip_inputs(c, meta, modalities + "a") for c in clips]  # fbank kept for display
    inputs = {k: torch.cat([v[k] for v in per_view]) for k in per_view[0]
              if k in ("video", "audio") and k[0] in modalities}  # (V,3,T,S,S) / (V,1,F,N)
    return {"inputs": inputs, "clip": first, "has_audio": bool(first.has_audio),
            "fbank": per_view[0]["audio"][0, 0], "views": views}
