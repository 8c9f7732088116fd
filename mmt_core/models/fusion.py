"""AVBottleneck (paper sec. 3.4, eq. 5): L shared fusion tokens through the last K blocks of the
video and audio encoders.

At fused block k the video block runs on [CLS_V, F, video tokens]; the audio block then runs on
[CLS_A, F_V, audio tokens] where F_V are the fusion tokens the video block just updated. The paper
says the fusion tokens are "updated by averaging the multimodal tokens along all the AVBottleneck
blocks"; we define it as: the tokens entering fused block k+1 are the running mean of the fusion
tokens output (by the audio block) of fused blocks 1..k. Fusion tokens are prefix tokens: they
sit right after the class token, attend and are attended to, and never enter pooling or
relative position, so the grids are the same with or without them.

The running mean lives in one width, D_F = the video encoder's final width; where a block's
width differs (MViT doubles widths at stage starts) a Linear maps the tokens in or out, and
another maps video-block outputs to the audio block's width when the two encoders differ.
The blocks run through the encoders' `run_blocks`, so activation checkpointing
(`set_grad_checkpointing`) covers the fused blocks too.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .multiscale import Grid, MultiscaleEncoder


def _map(dim_in: int, dim_out: int) -> nn.Module:
    return nn.Identity() if dim_in == dim_out else nn.Linear(dim_in, dim_out)


class AVBottleneck(nn.Module):
    """Holds the fusion tokens and width maps; the blocks stay in the two encoders."""

    def __init__(self, *, video: MultiscaleEncoder, audio: MultiscaleEncoder, num_blocks: int = 4,
                 num_tokens: int = 4):
        super().__init__()
        K = num_blocks
        if not 1 <= K <= min(len(video.blocks), len(audio.blocks)):
            raise ValueError(f"fusion_blocks must be in [1, {min(len(video.blocks), len(audio.blocks))}], got {K}")
        if num_tokens < 0:
            raise ValueError(f"fusion_tokens must be >= 0, got {num_tokens}")
        vb, ab = video.blocks[-K:], audio.blocks[-K:]
        self.num_blocks, self.num_tokens = K, num_tokens
        self.dim = video.num_features  # D_F, the width of the running mean
        self.tokens = nn.Parameter(torch.zeros(1, num_tokens, self.dim))  # E^F_1..L, shared by both
        nn.init.trunc_normal_(self.tokens, std=0.02)
        self.to_video = nn.ModuleList(_map(self.dim, b.dim) for b in vb)
        self.video_to_audio = nn.ModuleList(_map(v.dim_out, a.dim) for v, a in zip(vb, ab))
        self.from_audio = nn.ModuleList(_map(a.dim_out, self.dim) for a in ab)

    @staticmethod
    def _with_fusion(x: Tensor, f: Tensor, p: int, old: int) -> Tensor:
        """[prefix, f, grid]: replace the `old` fusion tokens after the p class tokens by f."""
        return torch.cat((x[:, :p], f, x[:, p + old:]), dim=1)

    def forward(self, video: MultiscaleEncoder, audio: MultiscaleEncoder, xv: Tensor, gv: Grid,
                xa: Tensor, ga: Grid) -> tuple[Tensor, Tensor]:
        """Run the last K blocks of both encoders on tokens that went through the blocks before.

        xv, xa: (B, P+N, C) tokens with P = the encoder's class tokens; returns the tokens after
        the last block, (B, P+L+N', C): the L fusion tokens stay after the class token.
        """
        K, L = self.num_blocks, self.num_tokens
        pv, pa = video.num_prefix, audio.num_prefix
        iv, ia = len(video.blocks) - K, len(audio.blocks) - K
        f = self.tokens.expand(xv.shape[0], -1, -1)  # (B, L, D_F)
        total, old = None, 0
        for k in range(K):
            xv = self._with_fusion(xv, self.to_video[k](f), pv, old)  # (B, Pv+L+Nv, Cv)
            xv, gv = video.run_blocks(xv, gv, iv + k, iv + k + 1, num_prefix=pv + L)
            f_v = self.video_to_audio[k](xv[:, pv:pv + L])  # video-updated fusion tokens
            xa = self._with_fusion(xa, f_v, pa, old)
            xa, ga = audio.run_blocks(xa, ga, ia + k, ia + k + 1, num_prefix=pa + L)
            out = self.from_audio[k](xa[:, pa:pa + L])  # (B, L, D_F)
            total = out if total is None else total + out
            f, old = total / (k + 1), L  # running mean over fused blocks 1..k
        return xv, xa
