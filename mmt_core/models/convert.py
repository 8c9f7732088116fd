"""Foreign MViTv2 weights into our encoders; reads local files only, never downloads.

    load_foreign_weights(model, "mvit_v2_s-ae3be167.pth", "torchvision")  # -> video encoder
    load_foreign_weights(model, "mvitv2_base.safetensors", "timm")         # -> MAT (or the image model)
    load_foreign_weights(model, "MViTv2_S_16x4_k400_f302660347.pyth", "slowfast")

Sources: "torchvision" (mvit_v2_s) and "slowfast" (MViTv2 .pyth, a dict with "model_state") go
into the 3-D video encoder; "timm" (mvitv2_*, ImageNet) goes into the audio encoder when the
model has one (the paper's MAT init: patch-embed weights summed over RGB to one channel,
rel-pos tables interpolated to the spectrogram grid, h -> mel axis, w -> time axis), else into
the 2-D image encoder. Every name is first mapped to our encoder naming by `checkpoint_filter_fn`.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

SOURCES = ("torchvision", "timm", "slowfast")
_HEAD = "__head__"  # mapped name of a foreign classifier (kept only where the shapes match)


def read_state_dict(source) -> dict[str, Tensor]:
    """A dict as is; a path: .safetensors or a torch file (weights_only); unwraps the usual
    containers ("model_state" of SlowFast, "state_dict", "model")."""
    if isinstance(source, dict):
        sd = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"weights file not found: {path}")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                sd = load_file(str(path))
            else:
                sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated file, a pickle with code in it, ...
            raise ConfigError(f"cannot read weights from {path}: {str(e).splitlines()[0]}") from None
    for key in ("model_state", "state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ConfigError("weights must be a dict of tensors (a state dict)")
    return sd


def _rename(key: str, source: str, depths: tuple[int, ...]) -> str | None:
    """Foreign name -> our encoder's name (without the 'video.'/'audio.' prefix), or None."""
    if source == "torchvision":
        key = key.replace("conv_proj.", "patch_embed.").replace("pos_encoding.class_token", "cls_token")
        key = key.replace("attn.project.0.", "attn.proj.")
        key = re.sub(r"attn\.pool_([qkv])\.pool\.", r"attn.pool_\1.", key)
        key = re.sub(r"attn\.pool_([qkv])\.norm_act\.0\.", r"attn.norm_\1.", key)
        key = key.replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.3.", ".mlp.fc2.")
        key = re.sub(r"^(blocks\.\d+)\.project\.", r"\1.shortcut_proj.", key)
        key = re.sub(r"^head\.1\.", _HEAD + ".", key)
    elif source == "slowfast":
        key = key.replace("patch_embed.proj.", "patch_embed.")
        key = re.sub(r"^(blocks\.\d+)\.proj\.", r"\1.shortcut_proj.", key)
        key = re.sub(r"^head\.projection\.", _HEAD + ".", key)
    elif source == "timm":
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", key)
        if m:  # timm nests blocks in stages; ours are one flat list
            key = f"blocks.{sum(depths[:int(m[1])]) + int(m[2])}.{m[3]}"
        key = key.replace("patch_embed.proj.", "patch_embed.").replace("shortcut_proj_attn.", "shortcut_proj.")
        key = re.sub(r"^head\.fc\.", _HEAD + ".", key)
    else:
        raise ConfigError(f"unknown weights source '{source}'; choose one of {', '.join(SOURCES)}")
    if key.startswith("pos_encoding.") or "pos_embed" in key:
        return None  # absolute position embeddings: MViTv2 uses relative ones
    return key


def _resize_rel_pos(t: Tensor, length: int) -> Tensor:
    """(L, d) table -> (length, d), linear interpolation along L (as torchvision/timm do)."""
    if t.shape[0] == length:
        return t
    return F.interpolate(t.t()[None].float(), size=length, mode="linear")[0].t().to(t.dtype)


def checkpoint_filter_fn(state_dict: dict[str, Tensor], encoder: nn.Module, source: str,
                         axis_map: dict[str, str] | None = None) -> tuple[dict, dict]:
    """Map a foreign state dict onto `encoder` (a MultiscaleEncoder). Returns (our state dict
    for the encoder, plus "__head__.*" for the classifier; report with adapted/skipped keys)."""
    own = encoder.state_dict()
    out, adapted, skipped = {}, [], []
    for key, value in state_dict.items():
        name = _rename(key, source, encoder.cfg.depths)
        if name is None:
            skipped.append(f"{key} (not used by this architecture)")
            continue
        if axis_map:
            name = re.sub(r"rel_pos_(\w+)$", lambda m: f"rel_pos_{axis_map.get(m[1], m[1])}", name)
        if name.startswith(_HEAD + "."):
            out[name] = value
            continue
        if name not in own:
            skipped.append(f"{key} (no such parameter here)")
            continue
        target = own[name].shape
        if name == "cls_token" and value.shape != target and value.numel() == target.numel():
            value = value.reshape(target)
        elif name == "patch_embed.weight" and value.shape[1] != target[1] and target[1] == 1:
            adapted.append(f"{key} (RGB summed to 1 channel)")
            value = value.sum(1, keepdim=True)
        elif "rel_pos_" in name and value.shape[0] != target[0] and value.shape[1:] == target[1:]:
            adapted.append(f"{key} (interpolated {value.shape[0]} -> {target[0]})")
            value = _resize_rel_pos(value, target[0])
        if value.shape != target:
            skipped.append(f"{key} (shape {tuple(value.shape)} != {tuple(target)})")
            continue
        out[name] = value
    return out, {"adapted": adapted, "skipped": skipped}


def load_foreign_weights(model: nn.Module, state_dict_or_path, source: str) -> dict:
    """Load torchvision / timm / SlowFast MViTv2 weights into `model` (an MMT-family model).

    Returns {"source", "encoder", "loaded", "adapted", "skipped", "missing"}: foreign keys loaded,
    changed to fit, not used; our encoder keys left at their init (e.g. MAT's class token).
    """
    if source not in SOURCES:
        raise ConfigError(f"unknown weights source '{source}'; choose one of {', '.join(SOURCES)}")
    video, audio = getattr(model, "video", None), getattr(model, "audio", None)
    if source == "timm":
        target, enc = ("audio", audio) if audio is not None else ("video", video)
        if enc is None or len(enc.cfg.input_size) != 2:
            raise ConfigError("timm MViTv2 weights fit a 2-D encoder (MAT or the image model); "
                              f"this model has none (modalities {getattr(model, 'modalities', '?')})")
        axis_map = {"h": "f", "w": "t"} if target == "audio" else None
    else:
        target, enc, axis_map = "video", video, None
        if enc is None or len(enc.cfg.input_size) != 3:
            raise ConfigError(f"{source} MViTv2 weights fit a video encoder; this model has none "
                              f"(modalities {getattr(model, 'modalities', '?')})")
    mapped, report = checkpoint_filter_fn(read_state_dict(state_dict_or_path), enc, source, axis_map)
    head = {k.split(".", 1)[1]: v for k, v in mapped.items() if k.startswith(_HEAD + ".")}
    weights = {k: v for k, v in mapped.items() if not k.startswith(_HEAD + ".")}
    if not weights:
        raise ConfigError(f"no tensor of these weights fits the {target} encoder "
                          f"(another architecture, or not a {source} MViTv2?)")
    missing, _ = enc.load_state_dict(weights, strict=False)
    loaded = [f"{target}.{k}" for k in weights]
    heads = getattr(model, "heads", None)
    label = heads["label"] if heads is not None and "label" in heads else None
    if head and label is not None and all(label.state_dict()[k].shape == v.shape for k, v in head.items()):
        label.load_state_dict(head)
        loaded += [f"heads.label.{k}" for k in head]
    elif head:
        report["skipped"] += [f"classifier {k} (other classes or a fused head)" for k in head]
    return {"source": source, "encoder": target, "loaded": loaded, "adapted": report["adapted"],
            "skipped": report["skipped"], "missing": [f"{target}.{k}" for k in missing]}
