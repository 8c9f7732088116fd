"""MAT, the multiscale audio Transformer (paper sec. 3.1): MViTv2 stages on the (mel, time) grid of a
1-channel log-mel spectrogram. The patch embed is MViTv2's image stem (Conv2d k7 s4 p3), so a
128 x 1024 fbank becomes a 32 x 256 grid; Q pooling halves both axes at each stage start and the
relative position is decomposed along frequency and time, E_rel = Q_i . (R_t + R_f) (eq. 2).
"""
from __future__ import annotations

import dataclasses

from .multiscale import EncoderConfig


def _mat(depths: tuple[int, ...], embed_dim: int = 96, kv_stride: int = 2) -> EncoderConfig:
    stages = len(depths)
    return EncoderConfig(
        input_size=(128, 1024), in_chans=1, axis_names=("f", "t"),
        patch_kernel=(7, 7), patch_stride=(4, 4), patch_padding=(3, 3),
        embed_dim=embed_dim, depths=depths, num_heads=1, kernel_qkv=(3, 3),
        stride_q=((1, 1),) + ((2, 2),) * (stages - 1),
        # K/V pooled kv_stride x in stage 1, then adaptively less. timm's ImageNet MViTv2 uses 4;
        # on the 32 x 256 grid of a 128 x 1024 fbank that gives 31.6 GMACs for MAT-B, the paper
        # reports 46.2 GFLOPs (multiply-adds): stride 2 gives 44.0, so the paper's MAT pools K/V
        # less than the image model, as its longer time axis suggests.
        stride_kv_adaptive=(kv_stride, kv_stride),
        residual_prefix=False,  # SlowFast/torchvision: the class token gets no pooled-Q residual
    )


# name -> (encoder config, default input and classes)
MAT_VARIANTS: dict[str, tuple[EncoderConfig, dict]] = {
    # Two stages (one Q pooling after the stem), so the last grid (16 x 40 at 128 x 320) stays
    # fine enough for Grad-CAM; ~0.9 M parameters, trains on a laptop CPU in minutes.
    "mat_tiny": (_mat((1, 4), embed_dim=64, kv_stride=4), dict(mel_bins=128, audio_frames=320, num_classes=6)),
    # MViTv2-S / MViTv2-B hyper-parameters (timm mvitv2_small / mvitv2_base) on 1 x 128 x 1024,
    # K/V stride 2 in stage 1 (see _mat).
    "mat_s": (_mat((1, 2, 11, 2)), dict(mel_bins=128, audio_frames=1024, num_classes=309)),
    "mat_b": (_mat((2, 3, 16, 3)), dict(mel_bins=128, audio_frames=1024, num_classes=309)),
}


def mat_config(name: str, *, mel_bins: int | None = None, audio_frames: int | None = None) -> EncoderConfig:
    """The encoder config of a MAT variant for a (mel_bins x audio_frames) spectrogram."""
    if name not in MAT_VARIANTS:
        raise ValueError(f"unknown MAT variant {name!r}; known: {sorted(MAT_VARIANTS)}")
    cfg, d = MAT_VARIANTS[name]
    size = (mel_bins or d["mel_bins"], audio_frames or d["audio_frames"])
    if min(size) < 16:
        raise ValueError(f"spectrogram {size} is too small for MAT (at least 16 x 16)")
    return dataclasses.replace(cfg, input_size=size)
