"""Audio contrast: the part of an audio-visual model's video evidence that depends on the sound.

    map = normalise( max(0, V(video, own audio) − V(video, silence)) )

where V is an underlying video map for the same class (BASE: attention relevance, which pointed
better than Grad-CAM as the base on the built-in test clips, see docs/explain.md) and "silence" is the normalised fbank of an all-silent window with the
checkpoint's preprocessing (needs `meta`). Where the picture alone already carries the evidence,
the two maps agree and the difference vanishes; what remains is where the sound binds to the
picture: the paper's claim made visible. Video-only and audio-only models have no such map.
"""
from __future__ import annotations

import numpy as np
from torch import nn

from ._common import CAM_BLOCKS, model_inputs, normalise, resolve_target, silence_fbank

DESCRIPTION = ("Audio contrast (MMT only): the video relevance map with the clip's sound minus the "
               "one with silence, clipped at 0: where the sound binds to the picture.")
BASE = "relevance"  # the underlying video map: "relevance" or "gradcam"


def explain(model: nn.Module, inputs: dict, *, target: int | None = None, head: str | None = None,
            block=CAM_BLOCKS, meta: dict | None = None) -> dict:
    from . import get_explainer

    if getattr(model, "modalities", "") != "av":
        raise ValueError(f"audio_contrast needs an audio-visual model; this one has modalities "
                         f"'{getattr(model, 'modalities', '')}'")
    if meta is None:
        raise ValueError("audio_contrast needs the checkpoint's meta (its fbank normalisation) "
                         "to build the silent input")
    x = model_inputs(model, inputs)
    target = resolve_target(model, x, target, head)
    base = get_explainer(BASE)
    own = base(model, x, target=target, head=head, block=block)["video"]
    silent = {**x, "audio": silence_fbank(meta).to(x["audio"])}
    quiet = base(model, silent, target=target, head=head, block=block)["video"]
    return {"video": normalise(np.maximum(own - quiet, 0.0)), "audio": None, "target": target}
