"""The paper's comparison models: AST (a ViT on the log-mel spectrogram) and MBT (ViT audio +
ViT video exchanging information through a few bottleneck tokens, Nagrani et al. 2021).

Plain builder functions plus the `BASELINES` dict (name -> builder); the registry merges that
dict, so this module imports nothing from the registry (that import would be circular).

Choices, stated once:
- AST keeps one class token (AST itself has class + distillation tokens and averages them; the
  second token only matters for DeiT weight import, which this project does not do).
- MBT's video branch embeds tubelets of 2 frames x 16 x 16 (ViViT-style Conv3d), so 16 frames at
  224^2 give 8 x 14 x 14 = 1568 tokens, the token count of MBT's 8 frames x 196 patches.
- MBT's two encoders have separate weights; bottleneck tokens join at `fusion_layer` and sit
  right after the class token, so every block outputs prefix tokens first (Grad-CAM contract).
- Position embeddings are learned for the default grid and resized (bilinear / trilinear) when
  an input of another size arrives, so tests and short clips need no rebuild.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .output import ModelOutput, cam_block_index


@dataclass
class ViTSize:
    dim: int = 768  # token width (ViT-B)
    depth: int = 12  # transformer blocks (ViT-B)
    heads: int = 12  # attention heads (ViT-B)
    mlp_ratio: float = 4.0  # MLP hidden width / dim (ViT)
    fusion_layer: int = 8  # MBT: first block that sees the bottleneck tokens (Nagrani et al.: 8)


SIZES = {
    "b": ViTSize(),
    "tiny": ViTSize(dim=64, depth=4, heads=4, fusion_layer=2),
}
# Default inputs: the paper's for "b" (1x128x1024 fbank, 16x224^2 frames); small ones for tests.
INPUTS = {
    "b": dict(num_frames=16, image_size=224, mel_bins=128, audio_frames=1024, num_classes=309),
    "tiny": dict(num_frames=4, image_size=64, mel_bins=64, audio_frames=256, num_classes=10),
}


def _heads(num_classes: int | dict[str, int]) -> dict[str, int]:
    heads = {"label": num_classes} if isinstance(num_classes, int) else dict(num_classes)
    if not heads or any(not isinstance(n, int) or n < 1 for n in heads.values()):
        raise ValueError(f"num_classes must be a positive int or a dict head->int, got {num_classes!r}")
    return heads


class ViTEncoder(nn.Module):
    """Patch embedding + class token + learned position embedding + blocks + final norm.

    `patch` and `stride` have 2 entries (spectrogram, Conv2d) or 3 (video tubelets, Conv3d).
    The blocks are run by the owner (AST runs them all; MBT interleaves the two encoders).
    """

    def __init__(self, *, in_chans: int, input_size: tuple[int, ...], patch: tuple[int, ...],
                 stride: tuple[int, ...], size: ViTSize, drop_path: float = 0.0):
        super().__init__()
        conv = nn.Conv2d if len(patch) == 2 else nn.Conv3d
        self.patch_embed = conv(in_chans, size.dim, kernel_size=patch, stride=stride)
        self.grid = tuple((s - p) // st + 1 for s, p, st in zip(input_size, patch, stride))
        if min(self.grid) < 1:
            raise ValueError(f"input {input_size} is smaller than one patch {patch}")
        n = 1
        for g in self.grid:
            n *= g
        self.cls_token = nn.Parameter(torch.zeros(1, 1, size.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n, size.dim))  # patches only; cls has its own
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, size.dim))
        rates = [drop_path * i / max(size.depth - 1, 1) for i in range(size.depth)]  # stochastic depth ramp
        self.blocks = nn.ModuleList(
            Block(size.dim, size.heads, size.mlp_ratio, qkv_bias=True, drop_path=r) for r in rates)
        for blk in self.blocks:
            blk.attn.fused_attn = True  # always F.scaled_dot_product_attention
        self.norm = nn.LayerNorm(size.dim, eps=1e-6)
        self.grad_checkpointing = False  # recompute block activations in backward
        for p in (self.cls_token, self.pos_embed, self.cls_pos):
            nn.init.trunc_normal_(p, std=0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def run_block(self, i: int, x: Tensor) -> Tensor:
        """blocks[i](x); while training with autograd on and checkpointing set, its activations
        are recomputed in backward (non-reentrant: the RNG state is restored for drop-path)."""
        blk = self.blocks[i]
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """(B, C, *spatial) -> tokens (B, 1+N, D) with the class token first, and the patch grid."""
        x = self.patch_embed(x)  # (B, D, *grid)
        grid = tuple(x.shape[2:])
        pos = self.pos_embed
        if grid != self.grid:  # another input size: resize the learned grid of embeddings
            pos = pos.transpose(1, 2).reshape(1, -1, *self.grid)  # (1, D, *grid0)
            mode = "bilinear" if len(grid) == 2 else "trilinear"
            pos = F.interpolate(pos, size=grid, mode=mode, align_corners=False)
            pos = pos.flatten(2).transpose(1, 2)  # (1, N, D)
        x = x.flatten(2).transpose(1, 2) + pos  # (B, N, D)
        cls = (self.cls_token + self.cls_pos).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1), grid


def _grid_reshape(grid_of, prefix: int):
    """Grad-CAM reshape: drop `prefix` tokens, (B, N, C) -> (B, C, *grid)."""

    def reshape(tokens: Tensor) -> Tensor:
        x = tokens[:, prefix:]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid_of())  # (B, C, *grid)

    return reshape


class AST(nn.Module):
    """Audio Spectrogram Transformer: ViT over overlapping 16x16 patches (stride 10) of the fbank."""

    modalities = "a"

    def __init__(self, *, size: ViTSize, num_classes: int | dict[str, int], mel_bins: int,
                 audio_frames: int, proj_dim: int = 256, drop_path: float = 0.0,
                 dropout: float = 0.0):
        super().__init__()
        self.input_spec = {"audio": (1, mel_bins, audio_frames)}
        self.encoder = ViTEncoder(in_chans=1, input_size=(mel_bins, audio_frames), patch=(16, 16),
                                  stride=(10, 10), size=size, drop_path=drop_path)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({h: nn.Linear(size.dim, n) for h, n in _heads(num_classes).items()})
        self.audio_proj = nn.Linear(size.dim, proj_dim)
        self._grid = self.encoder.grid

    def forward(self, *, audio: Tensor, video: Tensor | None = None) -> ModelOutput:
        if audio.dim() != 4:
            raise ValueError(f"AST expects audio (B, 1, F, N), got {tuple(audio.shape)}")
        x, self._grid = self.encoder.embed(audio)
        for i in range(len(self.encoder.blocks)):
            x = self.encoder.run_block(i, x)
        emb = self.encoder.norm(x)[:, 0]  # E_CLS^A, (B, D)
        logits = {h: head(self.dropout(emb)) for h, head in self.heads.items()}
        return ModelOutput(head_logits=logits, audio_embed=emb, audio_proj=self.audio_proj(emb))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def cam_target(self, modality: str = "audio", block: int = -2):
        if modality != "audio":
            raise ValueError(f"AST has only the audio modality, not {modality!r}")
        idx = cam_block_index(len(self.encoder.blocks), block, modality)
        return self.encoder.blocks[idx], _grid_reshape(lambda: self._grid, prefix=1)


class MBT(nn.Module):
    """Multimodal Bottleneck Transformer: per-modality ViTs; from `fusion_layer` on, each modality
    attends over [cls, bottlenecks, own patches] and the bottlenecks are averaged after each block.
    The prediction is the average of the two class-token heads (MBT's late average)."""

    modalities = "av"

    def __init__(self, *, size: ViTSize, num_classes: int | dict[str, int], num_frames: int,
                 image_size: int, mel_bins: int, audio_frames: int, proj_dim: int = 256,
                 fusion_tokens: int = 4, drop_path: float = 0.0, dropout: float = 0.0):
        super().__init__()
        if not 0 <= size.fusion_layer < size.depth:
            raise ValueError(f"fusion_layer must be in [0, {size.depth}), got {size.fusion_layer}")
        if num_frames < 2:
            raise ValueError(f"MBT embeds 2-frame tubelets: num_frames must be >= 2, got {num_frames}")
        self.input_spec = {"video": (3, num_frames, image_size, image_size),
                           "audio": (1, mel_bins, audio_frames)}
        self.fusion_layer = size.fusion_layer
        self.audio = ViTEncoder(in_chans=1, input_size=(mel_bins, audio_frames), patch=(16, 16),
                                stride=(10, 10), size=size, drop_path=drop_path)
        self.video = ViTEncoder(in_chans=3, input_size=(num_frames, image_size, image_size),
                                patch=(2, 16, 16), stride=(2, 16, 16), size=size, drop_path=drop_path)
        self.bottleneck = nn.Parameter(torch.zeros(1, fusion_tokens, size.dim))
        nn.init.trunc_normal_(self.bottleneck, std=0.02)
        heads = _heads(num_classes)
        self.dropout = nn.Dropout(dropout)
        self.audio_heads = nn.ModuleDict({h: nn.Linear(size.dim, n) for h, n in heads.items()})
        self.video_heads = nn.ModuleDict({h: nn.Linear(size.dim, n) for h, n in heads.items()})
        self.audio_proj = nn.Linear(size.dim, proj_dim)
        self.video_proj = nn.Linear(size.dim, proj_dim)
        self._grids = {"audio": self.audio.grid, "video": self.video.grid}

    def forward(self, *, video: Tensor | None = None, audio: Tensor | None = None) -> ModelOutput:
        if video is None and audio is None:
            raise ValueError("MBT needs video=(B,3,T,S,S) and/or audio=(B,1,F,N)")
        enc = {"audio": self.audio, "video": self.video}
        x = {}
        for m, inp in (("audio", audio), ("video", video)):
            if inp is not None:
                x[m], self._grids[m] = enc[m].embed(inp)  # (B, 1+N_m, D)
        B = next(iter(x.values())).shape[0]
        L = self.bottleneck.shape[1]
        b = None
        for i in range(len(self.audio.blocks)):
            if i < self.fusion_layer:
                x = {m: enc[m].run_block(i, t) for m, t in x.items()}
                continue
            if b is None:
                b = self.bottleneck.expand(B, -1, -1)  # (B, L, D)
            new_b = []
            for m, t in x.items():
                y = enc[m].run_block(i, torch.cat([t[:, :1], b, t[:, 1:]], dim=1))  # (B, 1+L+N_m, D)
                x[m] = torch.cat([y[:, :1], y[:, 1 + L:]], dim=1)
                new_b.append(y[:, 1:1 + L])
            b = torch.stack(new_b).mean(0)  # the shared bottleneck: average over modalities
        out = ModelOutput(head_logits={})
        per_mod = []
        for m, t in x.items():
            emb = enc[m].norm(t)[:, 0]  # E_CLS^m, (B, D)
            heads = self.audio_heads if m == "audio" else self.video_heads
            per_mod.append({h: head(self.dropout(emb)) for h, head in heads.items()})
            proj = (self.audio_proj if m == "audio" else self.video_proj)(emb)
            setattr(out, f"{m}_embed", emb)
            setattr(out, f"{m}_proj", proj)
        out.head_logits = {h: torch.stack([p[h] for p in per_mod]).mean(0) for h in per_mod[0]}
        return out

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for enc in (self.audio, self.video):
            enc.set_grad_checkpointing(enable)

    def cam_target(self, modality: str, block: int = -2):
        if modality not in ("audio", "video"):
            raise ValueError(f"MBT modalities are 'audio' and 'video', not {modality!r}")
        enc = self.audio if modality == "audio" else self.video
        idx = cam_block_index(len(enc.blocks), block, modality)
        # Fusion blocks carry [cls, bottlenecks, patches]; earlier blocks only [cls, patches].
        prefix = 1 + (self.bottleneck.shape[1] if idx >= self.fusion_layer else 0)
        return enc.blocks[idx], _grid_reshape(lambda: self._grids[modality], prefix=prefix)


def _init_linear(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def _build(cls, size_name: str, *, num_classes=None, num_frames=None, image_size=None,
           mel_bins=None, audio_frames=None, proj_dim: int = 256, drop_path: float = 0.0,
           dropout: float = 0.0, **extra) -> nn.Module:
    d = INPUTS[size_name]
    pick = lambda v, k: d[k] if v is None else v  # noqa: E731  (None = the variant's default)
    kw = dict(size=SIZES[size_name], num_classes=pick(num_classes, "num_classes"),
              mel_bins=pick(mel_bins, "mel_bins"), audio_frames=pick(audio_frames, "audio_frames"),
              proj_dim=proj_dim, drop_path=drop_path, dropout=dropout)
    if cls is MBT:
        kw.update(num_frames=pick(num_frames, "num_frames"), image_size=pick(image_size, "image_size"),
                  **extra)
    elif extra:
        raise ValueError(f"unknown options for AST: {sorted(extra)}")
    return _init_linear(cls(**kw))


def ast_b(**kw) -> AST:
    return _build(AST, "b", **kw)


def ast_tiny(**kw) -> AST:
    return _build(AST, "tiny", **kw)


def mbt_b(**kw) -> MBT:
    return _build(MBT, "b", **kw)


def mbt_tiny(**kw) -> MBT:
    return _build(MBT, "tiny", **kw)


BASELINES = {"ast_b": ast_b, "ast_tiny": ast_tiny, "mbt_b": mbt_b, "mbt_tiny": mbt_tiny}
