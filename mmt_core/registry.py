"""Named model variants: `create_model(name, **overrides)`, `list_models()`, `model_info(name)`.

Every builder takes the input-shape overrides `num_classes`, `num_frames`, `image_size`,
`mel_bins`, `audio_frames` and ignores those its modalities do not use; MMT builders also take
`modalities`, `fusion`, `fusion_blocks`, `fusion_tokens`, `proj_dim`, `drop_path`, `dropout`.
The paper's baselines (AST, MBT) come from `models.baselines.BASELINES`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .errors import UserError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_SHAPES = ("num_frames", "image_size", "mel_bins", "audio_frames")


class UnknownModelError(UserError, ValueError):
    """A model name that is not registered (a ValueError for library callers, a UserError for the CLI)."""


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a builder under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def _registry() -> dict[str, Callable[..., nn.Module]]:
    from .models.baselines import BASELINES  # imported late: it pulls in timm

    return {**BASELINES, **_MODELS}


def list_models() -> list[str]:
    return sorted(_registry())


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; `overrides` as in the module docstring (None = the default)."""
    reg = _registry()
    if name not in reg:
        raise UnknownModelError(f"unknown model '{name}'; available: {', '.join(sorted(reg))}")
    return reg[name](**{k: v for k, v in overrides.items() if v is not None})


def _mmt(video: str | None, audio: str | None, defaults: dict, kw: dict, modalities: str) -> nn.Module:
    from .models.audio import mat_config
    from .models.mmt import build_mmt
    from .models.video import image_config, video_config

    kw = {**defaults, **kw}
    modalities = kw.pop("modalities", modalities)
    shapes = {k: kw.pop(k, None) for k in _SHAPES}
    want_v, want_a = modalities in ("av", "v", "image"), modalities in ("av", "a")
    if (want_v and video is None) or (want_a and audio is None) or not (want_v or want_a):
        raise ValueError(f"this model has no encoder for modalities {modalities!r}")
    vcfg = acfg = None
    if modalities == "image":
        vcfg = image_config(video, image_size=shapes["image_size"])
    elif want_v:
        vcfg = video_config(video, num_frames=shapes["num_frames"], image_size=shapes["image_size"])
    if want_a:
        acfg = mat_config(audio, mel_bins=shapes["mel_bins"], audio_frames=shapes["audio_frames"])
    return build_mmt(video=vcfg, audio=acfg, modalities=modalities, **kw)


# --- MMT: video + audio (or one of them with modalities="a"/"v") ---------------------------
@register_model
def mmt_tiny(**kw) -> nn.Module:
    return _mmt("mvit_tiny_video", "mat_tiny", dict(num_classes=6), kw, "av")


@register_model
def mmt_s(**kw) -> nn.Module:
    return _mmt("mvit_v2_s_video", "mat_s", dict(num_classes=309), kw, "av")


@register_model
def mmt_b(**kw) -> nn.Module:
    return _mmt("mvit_v2_b_video", "mat_b", dict(num_classes=309), kw, "av")


# --- MAT: audio only ---------------------------------------------------------------------
@register_model
def mat_tiny(**kw) -> nn.Module:
    return _mmt(None, "mat_tiny", dict(num_classes=6), kw, "a")


@register_model
def mat_s(**kw) -> nn.Module:
    return _mmt(None, "mat_s", dict(num_classes=309), kw, "a")


@register_model
def mat_b(**kw) -> nn.Module:
    return _mmt(None, "mat_b", dict(num_classes=309), kw, "a")


# --- MViTv2: video only, and the 2-D image model -----------------------------------------
@register_model
def mvit_tiny_video(**kw) -> nn.Module:
    return _mmt("mvit_tiny_video", None, dict(num_classes=6), kw, "v")


@register_model
def mvit_v2_s_video(**kw) -> nn.Module:
    return _mmt("mvit_v2_s_video", None, dict(num_classes=400), kw, "v")


@register_model
def mvit_v2_b_video(**kw) -> nn.Module:
    return _mmt("mvit_v2_b_video", None, dict(num_classes=400), kw, "v")


@register_model
def mvitv2_tiny_image(**kw) -> nn.Module:
    return _mmt("mvitv2_tiny_image", None, dict(num_classes=1000), kw, "image")


def model_info(name: str, frames: int | None = None, size: int | None = None,
               audio_frames: int | None = None, mel_bins: int | None = None,
               num_classes: int | None = None) -> dict:
    """Parameters and GMACs (multiply-adds: torch's FLOP counter / 2, the fvcore/paper convention)
    at batch 1. The model is built on the meta device: no memory, no compute, any size is quick;
    there SDPA runs its math decomposition, so attention matmuls are counted."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = create_model(name, num_frames=frames, image_size=size, audio_frames=audio_frames,
                             mel_bins=mel_bins, num_classes=num_classes).eval()
        params = sum(p.numel() for p in model.parameters())
        inputs = {k: torch.empty(1, *shape) for k, shape in model.input_spec.items()}
        with FlopCounterMode(display=False) as counter:  # (its module tracker needs autograd on)
            model(**inputs)
    macs = counter.get_total_flops() / 2
    return {"model": name, "params": params, "params_m": round(params / 1e6, 2),
            "gmacs": round(macs / 1e9, 2), "inputs": {k: [1, *s] for k, s in model.input_spec.items()},
            "modalities": model.modalities}
