"""Shared pieces of the explainers: one view of the inputs, the target class, the model as a
function of one input, maps normalised to [0, 1] and resized to the model's input grid."""
from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NAMES = {"v": "video", "a": "audio"}
# Grad-CAM's default layers: the mean of the maps of block 0 (stage 1, the finest grid, before any
# fusion) and block 1 (the first block of stage 2), pytorch-grad-cam's multi-layer CAM. Chosen on
# the built-in val split (seed 500), where it points best for MMT and the video-only model alike
# (docs/explain.md); -2, the block before the last, is pytorch-grad-cam's choice for deep ViTs.
CAM_BLOCKS = (0, 1)
DIMS = {"video": 5, "audio": 4}  # (B,3,T,S,S) / (B,1,F,N)


def cam_blocks(block) -> tuple[int, ...]:
    """A CAM layer choice → block indices: an int (-2), a sequence ((0, 1)) or text ("0,1")."""
    if isinstance(block, str):
        try:
            out = tuple(int(b) for b in block.replace("+", ",").split(",") if b.strip())
        except ValueError:
            raise ValueError(f"CAM block {block!r} is not a block index or a comma-separated "
                             "list of them (e.g. -2 or 0,1)") from None
    elif isinstance(block, numbers.Integral):
        out = (int(block),)
    else:
        out = tuple(int(b) for b in block)
    if not out:
        raise ValueError("no CAM block given")
    return out


def first_view(x: torch.Tensor, dims: int) -> torch.Tensor:
    """(V, ...) or unbatched (...) → (1, ...): maps are drawn for the first view."""
    if x.dim() == dims - 1:
        x = x.unsqueeze(0)
    if x.dim() != dims:
        raise ValueError(f"expected a {dims}-D batch, got shape {tuple(x.shape)}")
    return x[:1]


def model_inputs(model: nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    """The first view of every input the model takes, detached: {"video"?, "audio"?}."""
    mods = getattr(model, "modalities", "")
    if mods not in ("av", "a", "v"):
        raise ValueError(f"cannot explain a model with modalities '{mods}' (audio and/or video only)")
    out = {}
    for m in mods:
        name = NAMES.get(m)
        if name is None:
            continue
        if name not in inputs:
            raise ValueError(f"a model with modalities '{mods}' needs inputs['{name}']")
        out[name] = first_view(inputs[name], DIMS[name]).detach()
    if not out:
        raise ValueError(f"cannot explain a model with modalities '{mods}'")
    return out


def logits_of(out, head: str | None) -> torch.Tensor:
    return out.head_logits[head] if head else out.logits


def resolve_target(model: nn.Module, x: dict, target: int | None, head: str | None) -> int:
    """`target`, checked, or the model's top class on `x` when None."""
    with torch.no_grad():
        logits = logits_of(model(**x), head)  # (1, C)
    if target is None:
        return int(logits[0].argmax())
    if not 0 <= int(target) < logits.shape[-1]:
        raise ValueError(f"target {target} is outside the {logits.shape[-1]} classes")
    return int(target)


class SingleInput(nn.Module):
    """forward(x) → one head's logits of `model`, the other modality's input held fixed."""

    def __init__(self, model: nn.Module, *, name: str, fixed: dict, head: str | None):
        super().__init__()
        self.model, self.name, self.fixed, self.head = model, name, fixed, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fixed input has batch 1; repeat it to x's batch (pytorch-grad-cam/Captum batch).
        other = {k: v.expand(x.shape[0], *v.shape[1:]) for k, v in self.fixed.items()}
        return logits_of(self.model(**{self.name: x}, **other), self.head)


def normalise(m: torch.Tensor | np.ndarray) -> np.ndarray:
    """Clip at 0 and divide by the maximum → float32 in [0, 1] (all zeros stay zeros)."""
    m = torch.as_tensor(m, dtype=torch.float32).clamp(min=0)
    top = float(m.max()) if m.numel() else 0.0
    return (m / top if top > 0 else m).numpy().astype(np.float32)


def resize_to(m: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """A (*grid) map → (*size), (tri)linear: token grids to the model's input grid."""
    mode = "trilinear" if m.dim() == 3 else "bilinear"
    return F.interpolate(m[None, None].float(), size=tuple(size), mode=mode,
                         align_corners=False)[0, 0]


def input_size(x: dict, name: str) -> tuple[int, ...]:
    """The map size of an input: (T, S, S) for video (B,3,T,S,S), (F, N) for audio (B,1,F,N)."""
    return tuple(x[name].shape[2:])


def to_frame_resolution(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, S, S) map on the centre crop → (T, height, width) on the decoded frames.

    The eval transform resizes the short side to S and centre-crops S×S, so the map covers the
    central min(H, W) square; outside it (wide frames) the map is 0.
    """
    t = cam.shape[0]
    side = min(height, width)
    x = torch.from_numpy(np.ascontiguousarray(cam, np.float32))[None]  # (1, T, S, S)
    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)[0]  # (T, side, side)
    out = np.zeros((t, height, width), np.float32)
    y0, x0 = (height - side) // 2, (width - side) // 2
    out[:, y0:y0 + side, x0:x0 + side] = x.clamp(0, 1).numpy()
    return out


def silence_fbank(meta: dict) -> torch.Tensor:
    """The normalised fbank of an all-silent window with a checkpoint's preprocessing, (1,1,F,N)."""
    from ..data.features import fbank, normalize

    pre = meta["preprocessing"]
    samples = int(round(pre["clip_seconds"] * pre["sample_rate"]))
    fb = fbank(torch.zeros(samples), pre["sample_rate"], num_mel_bins=pre["num_mel_bins"],
               target_frames=pre["audio_frames"])
    return normalize(fb, pre["audio_mean"], pre["audio_std"])[None, None]


class frozen_except:
    """Only `keep`'s parameters require grad inside the block (restored after), the model in
    eval mode, no gradients left on the parameters afterwards."""

    def __init__(self, model: nn.Module, keep: nn.Module | None = None):
        self.model, self.keep = model, keep

    def __enter__(self):
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        self.was_training = self.model.training
        self.model.eval()
        if self.keep is not None:
            for p, _ in self.flags:
                p.requires_grad_(False)
            for p in self.keep.parameters():
                p.requires_grad_(True)
        return self

    def __exit__(self, *exc):
        for p, flag in self.flags:
            p.requires_grad_(flag)
        self.model.train(self.was_training)
        self.model.zero_grad(set_to_none=True)
        return False
