"""Occlusion (Zeiler & Fergus 2014) with Captum: the drop of the class score when a patch of the
input is blanked. Faithful by definition and model-agnostic, but one forward pass per patch.

What "blank" means (`_blank`): a video patch takes its frame's median colour, i.e. the colour
of the background, since objects cover a small part of a frame; blanking it to the dataset's mean
grey instead paints a grey square onto a coloured background, a new "object" whose effect on the
score competes with the real ones (on the built-in val split, pointing 0.74 with the median fill
against 0.66 with grey: docs/explain.md). An audio patch takes 0 in the normalised fbank, the
training set's mean level.

Patches (sized so one built-in clip answers within ~10 s on a 2-core CPU, see
benchmarks/bench_explain.py): video tubes of PATCH_VIDEO = all frames × 16 × 16 pixels of the
96² crop, stride 16 (non-overlapping, 36 patches: the same spatial map on every frame, since the
built-in objects stay near their place); audio PATCH_AUDIO = 32 mel bins × 64 frames (0.64 s),
20 patches. One input is occluded at a time, the other held as it is. Each patch's score drop
sits at the patch centre and is interpolated (linearly) between centres, so a map's peak is a
patch centre rather than a patch corner; positive drops only (evidence for the class),
normalised to [0, 1].
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import CAM_BLOCKS, frozen_except, logits_of, model_inputs, normalise, resolve_target

DESCRIPTION = ("Occlusion (Captum): how much the class score drops when a patch is blanked "
               "(video: to the frame's background colour); faithful by definition, coarse "
               "(16-pixel tubes, 32 mel × 0.64 s patches).")
VERSION = 2  # 1: video patches blanked to the mean grey; 2: to each frame's median colour
PATCH_VIDEO = (1.0, 16, 16)  # (fraction of the frames, pixels, pixels) per tube
PATCH_AUDIO = (32, 64)  # (mel bins, fbank frames)
PER_EVAL = 28  # perturbed inputs per forward pass


def _windows(x: dict) -> tuple[tuple, tuple]:
    shapes, strides = [], []
    for name, t in x.items():
        if name == "video":
            T, H, W = t.shape[2:]
            w = (t.shape[1], max(1, round(T * PATCH_VIDEO[0])), min(PATCH_VIDEO[1], H),
                 min(PATCH_VIDEO[2], W))
        else:
            F_, N = t.shape[2:]
            w = (t.shape[1], min(PATCH_AUDIO[0], F_), min(PATCH_AUDIO[1], N))
        shapes.append(w)
        strides.append(w)
    return tuple(shapes), tuple(strides)


def _blank(name: str, t: torch.Tensor):
    """The baseline a blanked patch takes: each frame's per-channel median for video
    (B,3,T,S,S) → (B,3,T,1,1), broadcast by Captum; 0 for audio."""
    if name == "video":
        return t.flatten(3).median(-1).values[..., None, None]
    return 0.0


def explain(model: nn.Module, inputs: dict, *, target: int | None = None, head: str | None = None,
            block=CAM_BLOCKS, meta: dict | None = None) -> dict:
    """`block` is ignored."""
    from captum.attr import Occlusion

    x = model_inputs(model, inputs)
    target = resolve_target(model, x, target, head)
    names = list(x)

    def forward(*tensors):
        return logits_of(model(**dict(zip(names, tensors))), head)

    shapes, strides = _windows(x)
    with frozen_except(model), torch.no_grad():
        attrs = Occlusion(forward).attribute(
            tuple(x[n] for n in names), sliding_window_shapes=shapes, strides=strides,
            baselines=tuple(_blank(n, x[n]) for n in names), target=target,
            perturbations_per_eval=PER_EVAL)
    res = {"video": None, "audio": None, "target": target}
    for n, a, w in zip(names, attrs, shapes):
        m = a[0].sum(0)  # over channels → (T, S, S) / (F, N), constant on each patch
        cells = m[tuple(slice(k // 2, None, k) for k in w[1:])]  # one value per patch, at its centre
        res[n] = normalise(_between_centres(cells, w[1:], m.shape))
    return res


def _between_centres(cells: torch.Tensor, patch: tuple, size: tuple) -> torch.Tensor:
    """Per-patch values (*cells) → a map of `size`, linear between patch centres (clamped at
    the border): F.interpolate with align_corners=False puts cell i's value at pixel
    (i + 0.5)·patch − 0.5, the patch centre, when size = cells·patch."""
    import torch.nn.functional as F

    mode = "trilinear" if cells.dim() == 3 else "bilinear"
    full = tuple(c * k for c, k in zip(cells.shape, patch))  # the patches' extent
    out = F.interpolate(cells[None, None].float(), size=full, mode=mode, align_corners=False)[0, 0]
    pad = [0] * (2 * len(size))  # partial patches at the far border: repeat the last values
    for i, (s, f) in enumerate(zip(reversed(size), reversed(full))):
        pad[2 * i + 1] = max(0, s - f)
    if any(pad):
        out = F.pad(out[None], pad, mode="replicate")[0]
    return out[tuple(slice(0, s) for s in size)]
