"""The one output type every model in the registry returns, so the engine, losses and the
workbench treat audio-only, video-only, fused and baseline models the same way."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class ModelOutput:
    # Per head: name -> (B, classes). One head is called "label"; EPIC-100 has "verb" and "noun".
    head_logits: dict[str, Tensor]
    # E_CLS^A / E_CLS^V after the final norm, (B, D_a) / (B, D_v); None when the modality is absent.
    audio_embed: Tensor | None = None
    video_embed: Tensor | None = None
    # g_A(E_CLS^A) / g_V(E_CLS^V), (B, proj_dim), not normalised (the losses normalise).
    audio_proj: Tensor | None = None
    video_proj: Tensor | None = None
    # Late-fusion ("avg") models: each modality's own head logits, {"audio": {...}, "video": {...}};
    # the loss puts cross-entropy on each, head_logits is their average.
    aux_logits: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    # Fused (bottleneck) models with aux_heads: a linear head on E_CLS^V alone and one on E_CLS^A
    # alone, {"audio": {...}, "video": {...}}; loss.aux_ce weighs their cross-entropy.
    unimodal_logits: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    @property
    def logits(self) -> Tensor:
        """The first (for single-head models: the only) head's logits, (B, classes)."""
        return next(iter(self.head_logits.values()))

    @property
    def fused_embed(self) -> Tensor:
        """[E_CLS^V, E_CLS^A] (the classifier's input), or the one modality present."""
        parts = [e for e in (self.video_embed, self.audio_embed) if e is not None]
        return torch.cat(parts, dim=-1)


def cam_block_index(num_blocks: int, block: int, modality: str) -> int:
    """A Grad-CAM target block (negative counts from the end) as an index, or a ValueError."""
    if not -num_blocks <= block < num_blocks:
        raise ValueError(f"block {block} is outside the {num_blocks} {modality} blocks")
    return block % num_blocks
