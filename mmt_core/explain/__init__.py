"""Explainers: where a model looks (video map) and listens (audio map) for one class.

Every explainer has one signature and returns the same shapes:

    from mmt_core.explain import get_explainer, list_explainers
    res = get_explainer("relevance")(model, inputs, target=3)   # target None: the top class
    res["video"]   # (T, S, S) float32 in [0, 1] on the model's input crop, or None
    res["audio"]   # (F, N) float32 in [0, 1] on the model's fbank, or None
    res["target"]  # the class explained

`inputs` are the model inputs ({"video": (V,3,T,S,S), "audio": (V,1,F,N)}; the first view is
explained). `head` picks a head of multi-head models, `block` the encoder block(s) of block-based
methods (Grad-CAM; default `CAM_BLOCKS`, see `cam_blocks`), `meta` the checkpoint's config
(audio_contrast needs its fbank normalisation). `to_frame_resolution` maps a video map onto the
decoded frames. Methods and the relevance derivation: docs/explain.md. No UI package is
imported here.
"""
from __future__ import annotations

import importlib
from typing import Callable, NamedTuple

from ._common import CAM_BLOCKS, cam_blocks, silence_fbank, to_frame_resolution  # noqa: F401


class Explainer(NamedTuple):
    name: str
    module: str  # mmt_core.explain.<module>, imported on first use
    modalities: tuple[str, ...]  # model modalities it applies to


# name -> explainer, in the order the app and `mmt eval --pointing` list them
EXPLAINERS: dict[str, Explainer] = {
    "gradcam": Explainer("gradcam", "gradcam", ("av", "a", "v")),
    "relevance": Explainer("relevance", "relevance", ("av", "a", "v")),
    "occlusion": Explainer("occlusion", "occlusion", ("av", "a", "v")),
    "audio_contrast": Explainer("audio_contrast", "audio_contrast", ("av",)),
}


def _module(name: str):
    if name not in EXPLAINERS:
        raise ValueError(f"unknown explainer '{name}'; choose from {', '.join(EXPLAINERS)}")
    return importlib.import_module(f"{__name__}.{EXPLAINERS[name].module}")


def get_explainer(name: str) -> Callable[..., dict]:
    """explain(model, inputs, *, target=None, head=None, block=CAM_BLOCKS, meta=None) -> dict."""
    return _module(name).explain


def list_explainers(modalities: str | None = None) -> dict[str, str]:
    """name -> one-line description, of those that apply to a model with `modalities`."""
    return {n: _module(n).DESCRIPTION for n, e in EXPLAINERS.items()
            if modalities is None or modalities in e.modalities}


def block_key(name: str, block=CAM_BLOCKS) -> str:
    """How `block` enters method `name`'s map, as text for cache keys: the blocks ("0,1", "-2")
    for block-based maps (Grad-CAM; audio contrast when its base is Grad-CAM), else "any"."""
    layered = name == "gradcam" or (name == "audio_contrast" and _module(name).BASE == "gradcam")
    return ",".join(map(str, cam_blocks(block))) if layered else "any"


def method_key(name: str) -> str:
    """`name`, with "-vN" where the method's maps changed since its first version (a module's
    VERSION), so that scores cached under an older version's key are not reused."""
    version = getattr(_module(name), "VERSION", 1)
    return name if version == 1 else f"{name}-v{version}"


def applicable(name: str, modalities: str) -> bool:
    return name in EXPLAINERS and modalities in EXPLAINERS[name].modalities
