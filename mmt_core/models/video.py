"""MViTv2 video encoder (Li et al. 2022) on the (t, h, w) grid, and the 2-D image model.

The video stem is a Conv3d k(3,7,7) s(2,4,4) p(1,3,3): 16 x 224^2 frames give an 8 x 56 x 56
grid. `mvit_v2_s_video` is torchvision's mvit_v2_s exactly (its weights load; a test compares
logits); `mvitv2_tiny_image` is timm's mvitv2_tiny (no class token, average pooling), the
ImageNet model whose weights initialise MAT (convert.py).
"""
from __future__ import annotations

import dataclasses

from .multiscale import EncoderConfig


def _video(depths: tuple[int, ...], embed_dim: int = 96, kv_stride: int = 8) -> EncoderConfig:
    stages = len(depths)
    return EncoderConfig(
        input_size=(16, 224, 224), in_chans=3, axis_names=("t", "h", "w"),
        patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4), patch_padding=(1, 3, 3),
        embed_dim=embed_dim, depths=depths, num_heads=1, kernel_qkv=(3, 3, 3),
        stride_q=((1, 1, 1),) + ((1, 2, 2),) * (stages - 1),
        stride_kv_adaptive=(1, kv_stride, kv_stride), residual_prefix=False,
    )


# name -> (encoder config, default input and classes)
VIDEO_VARIANTS: dict[str, tuple[EncoderConfig, dict]] = {
    # 8 x 96^2 -> a 4 x 24 x 24 grid, one Q pooling -> 4 x 12 x 12 (fine enough for Grad-CAM).
    "mvit_tiny_video": (_video((1, 4), embed_dim=64, kv_stride=4),
                        dict(num_frames=8, image_size=96, num_classes=6)),
    # torchvision mvit_v2_s (SlowFast MVITv2_S_16x4): 34.5 M params, 64.2 GMACs at 16 x 224^2.
    "mvit_v2_s_video": (_video((1, 2, 11, 2)), dict(num_frames=16, image_size=224, num_classes=400)),
    # SlowFast MVITv2_B_32x3 hyper-parameters, run on the paper's 16 frames.
    "mvit_v2_b_video": (_video((2, 3, 16, 3)), dict(num_frames=16, image_size=224, num_classes=400)),
}

IMAGE_VARIANTS: dict[str, tuple[EncoderConfig, dict]] = {
    # timm mvitv2_tiny: 2-D MViTv2, K/V stride 4 then adaptive, avg-pooled, no class token.
    "mvitv2_tiny_image": (EncoderConfig(
        input_size=(224, 224), in_chans=3, axis_names=("h", "w"),
        patch_kernel=(7, 7), patch_stride=(4, 4), patch_padding=(3, 3),
        depths=(1, 2, 5, 2), kernel_qkv=(3, 3), stride_q=((1, 1), (2, 2), (2, 2), (2, 2)),
        stride_kv_adaptive=(4, 4), residual_prefix=True, cls_token=False, global_pool="avg"),
        dict(image_size=224, num_classes=1000)),
}


def video_config(name: str, *, num_frames: int | None = None, image_size: int | None = None) -> EncoderConfig:
    """The encoder config of a video variant for T x S x S clips."""
    if name not in VIDEO_VARIANTS:
        raise ValueError(f"unknown video variant {name!r}; known: {sorted(VIDEO_VARIANTS)}")
    cfg, d = VIDEO_VARIANTS[name]
    t, s = num_frames or d["num_frames"], image_size or d["image_size"]
    if t < 1 or s < 16:
        raise ValueError(f"clip {t} x {s}^2 is too small (at least 1 frame of 16 x 16)")
    return dataclasses.replace(cfg, input_size=(t, s, s))


def image_config(name: str, *, image_size: int | None = None) -> EncoderConfig:
    if name not in IMAGE_VARIANTS:
        raise ValueError(f"unknown image variant {name!r}; known: {sorted(IMAGE_VARIANTS)}")
    cfg, d = IMAGE_VARIANTS[name]
    s = image_size or d["image_size"]
    if s < 16:
        raise ValueError(f"image side {s} is too small (at least 16)")
    return dataclasses.replace(cfg, input_size=(s, s))
