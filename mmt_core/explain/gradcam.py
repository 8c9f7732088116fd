"""Grad-CAM (Selvaraju et al. 2017) of the video and audio encoders, pytorch-grad-cam doing the CAM.

pytorch-grad-cam wants a model with ONE input tensor, so each modality is explained through
`SingleInput`, which holds the other input fixed. The target layer and the token → grid reshape
come from `model.cam_target(modality, block)`: video tokens become (B, C, T, H, W), audio tokens
(B, C, F, N). `block` may name several blocks (default `CAM_BLOCKS` = (0, 1): stage 1 and the
first block of stage 2); their maps (each in [0, 1]) are averaged and the mean rescaled, as
pytorch-grad-cam aggregates several target layers. -2 is the block before the last, pytorch-
grad-cam's choice for deep Transformers; 0 alone the finer stage-1 map. pytorch-grad-cam handles
5-D activations natively (it averages the gradients over T, H, W and `scale_cam_image` zooms the
(T', H', W') map back to the input's (T, S, S)), so nothing is folded or re-implemented.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._common import (CAM_BLOCKS, NAMES, SingleInput, cam_blocks, frozen_except, model_inputs,
                      resolve_target)

DESCRIPTION = ("Grad-CAM (the paper's method): the encoder blocks' activations weighted by the "
               "class score's mean gradient.")


def cam(model: nn.Module, x: dict, modality: str, target: int | None, head: str | None,
        block=CAM_BLOCKS) -> np.ndarray:
    """Grad-CAM of one encoder ("v" or "a") for class `target` on one view `x` (batch 1), at
    `block` (an index or several, see `cam_blocks`): (T, S, S) or (F, N) float32 in [0, 1]."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    mods = getattr(model, "modalities", "")
    name = NAMES[modality]
    if modality not in mods:
        raise ValueError(f"model with modalities '{mods}' has no {name} encoder to explain")
    fixed = {k: v for k, v in x.items() if k != name}
    wrapper = SingleInput(model, name=name, fixed=fixed, head=head)
    targets = None if target is None else [ClassifierOutputTarget(int(target))]
    maps = []
    # One CAM per block: the blocks' token grids differ and pytorch-grad-cam takes one reshape.
    for b in cam_blocks(block):
        layer, reshape = model.cam_target(name, b)  # "video" | "audio"
        # Only the target layer's parameters require grad while the CAM runs: its output still
        # carries a gradient (all Grad-CAM needs), but autograd neither records the layers
        # before it nor back-propagates into them, which halves the cost. The CAM is unchanged.
        with frozen_except(model, layer), torch.enable_grad(), \
                GradCAM(model=wrapper, target_layers=[layer], reshape_transform=reshape) as gc:
            maps.append(gc(input_tensor=x[name], targets=targets))  # (1, T, S, S) or (1, F, N)
    # as pytorch-grad-cam's aggregate_multi_layers: the mean of the [0, 1] maps, rescaled
    grayscale = maps[0] if len(maps) == 1 else scale_cam_image(np.mean(maps, axis=0))
    return np.clip(grayscale[0], 0.0, 1.0).astype(np.float32)


def explain(model: nn.Module, inputs: dict, *, target: int | None = None, head: str | None = None,
            block=CAM_BLOCKS, meta: dict | None = None) -> dict:
    x = model_inputs(model, inputs)
    target = resolve_target(model, x, target, head)
    mods = model.modalities
    return {"video": cam(model, x, "v", target, head, block) if "v" in mods else None,
            "audio": cam(model, x, "a", target, head, block) if "a" in mods else None,
            "target": target}
