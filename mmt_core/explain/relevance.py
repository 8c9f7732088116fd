"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model
Explainability"), carried through MViTv2's pooling. The derivation is in docs/explain.md.

R holds, for every current token (rows), its relevance to the input tokens (columns: the
encoders' class tokens and patch grids, plus the AVBottleneck's learned fusion tokens). From
R = I, each block maps R_in (P+N_in rows) to R_out (P+N_out rows):

    R_out = S·R_in + Ā·(P_v·R_in),   Ā = mean_heads (∇A ⊙ A)⁺  (P+N_out × P+N_kv)

where P_v is the V pooling as a linear map over tokens and S the skip paths: identity on the
prefix rows; on grid rows the mean of the block's shortcut (max-pool, linearised as the mean
over its window; identity without Q stride) and of the residual pooling (the Q pooling conv).
A depthwise pooling conv has one kernel per channel; as a map over tokens it takes the mean over
channels of the absolute kernel, each output row normalised to sum 1 over its in-bounds taps.
Prefix tokens bypass pooling (identity rows). MLPs and norms act per token: R passes unchanged.

Fusion tokens: the relevance rows of the fusion tokens follow the forward exactly: the video
block's output rows feed the audio block, whose output rows are averaged over the fused blocks
(the running mean) and feed the next video block. The class decision reads [E_CLS^V, E_CLS^A],
so the readout is the sum of the two class tokens' rows; its video columns give the video map,
its audio columns the audio map.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.multiscale import MultiScaleBlock, explicit_attention
from ._common import (CAM_BLOCKS, frozen_except, logits_of, model_inputs, normalise, resize_to,
                      resolve_target)

DESCRIPTION = ("Attention relevance (Chefer et al. 2021): gradient-weighted attention maps rolled "
               "out through every block and its pooling, read at the class token.")


def _pool_rows(rows: Tensor, grid: tuple, kernel: Tensor, stride, padding) -> Tensor:
    """A pooling over the token grid as a linear map on relevance rows: (N_in, C) → (N_out, C).
    `kernel` (*k) is non-negative; each output row is normalised by its in-bounds tap weights."""
    conv = F.conv3d if len(grid) == 3 else F.conv2d
    C = rows.shape[1]
    k = kernel[None, None].to(rows)  # (1, 1, *k)
    x = rows.t().reshape(C, 1, *grid)  # columns as a batch, (C, 1, *grid)
    num = conv(x, k, stride=stride, padding=padding)  # (C, 1, *grid')
    den = conv(torch.ones(1, 1, *grid, dtype=rows.dtype), k, stride=stride, padding=padding)
    return (num / den.clamp(min=1e-12)).reshape(C, -1).t()  # (N_out, C)


def _conv_kernel(conv: nn.Module) -> Tensor:
    """A depthwise pooling conv as one kernel over tokens: mean over channels of |w|, (*k)."""
    return conv.weight.detach().abs().mean(dim=(0, 1))


def block_rule(R: Tensor, blk: MultiScaleBlock, grid: tuple, P: int, A: Tensor, G: Tensor) -> Tensor:
    """Relevance rows after one block. R (P+N_in, C); A, G: the block's attention (1, heads,
    P+N_out, P+N_kv) and its gradient → (P+N_out, C)."""
    attn = blk.attn
    Rp, Rg = R[:P], R[P:]  # prefix rows bypass pooling
    abar = (G * A).clamp(min=0).mean(dim=1)[0]  # Ā, (P+N_out, P+N_kv)
    if attn.pool_v is not None:
        pv = attn.pool_v
        Rkv = torch.cat((Rp, _pool_rows(Rg, grid, _conv_kernel(pv), pv.stride, pv.padding)))
    else:
        Rkv = R
    if blk.shortcut_pool is not None:  # max-pool shortcut, linearised as its window's mean
        sp = blk.shortcut_pool
        short = _pool_rows(Rg, grid, torch.ones(sp.kernel_size), sp.stride, sp.padding)
    else:
        short = Rg
    if attn.residual_pool:
        pq = attn.pool_q
        resid = Rg if pq is None else _pool_rows(Rg, grid, _conv_kernel(pq), pq.stride, pq.padding)
        skip_grid = (short + resid) / 2  # two skip paths, each row still sums to its input's
    else:
        skip_grid = short
    skip = torch.cat((Rp, skip_grid))  # (P+N_out, C)
    if abar.shape != (skip.shape[0], Rkv.shape[0]):
        raise RuntimeError(f"attention {tuple(abar.shape)} does not match {skip.shape[0]} queries "
                           f"and {Rkv.shape[0]} keys")
    return skip + abar @ Rkv


def _encoders(model) -> dict[str, nn.Module]:
    return {n: getattr(model, n) for n in ("video", "audio") if getattr(model, n, None) is not None}


def relevance_maps(model: nn.Module, x: dict, target: int, head: str | None) -> dict[str, Tensor]:
    """The class tokens' relevance over each encoder's input patch grid: {name: (*grid)}."""
    encs, steps, attn, first = record_attention(model, x, target, head)
    with torch.enable_grad():
        return _rollout(model, encs, steps, attn, first)


def record_attention(model: nn.Module, x: dict, target: int, head: str | None):
    """One forward + backward with explicit attention: (encoders, steps (encoder name, block,
    input grid, prefix count) in execution order, [(A, ∇A)] per step, each encoder's first
    input grid)."""
    encs = _encoders(model)
    for name, enc in encs.items():
        if enc.cls_token is None:
            raise ValueError(f"relevance needs a class token; the {name} encoder has none")
    owner = {id(b): name for name, enc in encs.items() for b in enc.blocks}
    steps = []  # (encoder name, block, input grid, prefix count), in execution order

    def record(blk, args):
        steps.append((owner[id(blk)], blk, tuple(args[1]), int(args[2])))

    hooks = [b.register_forward_pre_hook(record) for enc in encs.values() for b in enc.blocks]
    xg = {k: v.clone().requires_grad_(True) for k, v in x.items()}  # grads flow to A only
    try:
        with frozen_except(model, nn.Module()), torch.enable_grad(), explicit_attention(model):
            logits = logits_of(model(**xg), head)
            logits[0, target].backward()
            attn = [(blk.attn.last_attn.detach(), blk.attn.last_attn.grad) for _, blk, _, _ in steps]
    finally:
        for h in hooks:
            h.remove()
    if any(g is None for _, g in attn):
        raise RuntimeError("an attention map got no gradient")
    first = {}  # each encoder's input grid (of its first block)
    for name, blk, grid, P in steps:
        first.setdefault(name, grid)
    return encs, steps, attn, first


def _rollout(model, encs: dict, steps: list, attn: list, first: dict) -> dict[str, Tensor]:
    """The class tokens' row of R = M_n ... M_1 · I (the rule above, block by block).

    Only that row is needed, so instead of carrying the full R (tokens × input tokens) the
    rule is applied to one column z per input token set (R_0 = z instead of I): R_n = M·z is
    linear in z, so d(cls rows of R_n)/dz is exactly the cls row of M = M·I. One cheap pass
    with autograd instead of pooling thousands of columns."""
    L = model.bottleneck.num_tokens if getattr(model, "bottleneck", None) is not None else 0
    z = {n: torch.zeros(1 + int(torch.tensor(g).prod()), 1, requires_grad=True)
         for n, g in first.items()}  # class token + grid of each encoder
    z_f = torch.zeros(L, 1, requires_grad=True)  # the learned fusion tokens
    R = dict(z)
    fusion, total, fused = z_f, None, 0
    for (name, blk, grid, P), (A, G) in zip(steps, attn):
        enc_p = encs[name].num_prefix
        if P > enc_p:  # a fused block: rows enc_p:enc_p+L are the fusion tokens
            had = R[name].shape[0] > enc_p + int(torch.tensor(grid).prod())  # fusion rows present
            rest = R[name][enc_p + (L if had else 0):]
            R[name] = torch.cat((R[name][:enc_p], fusion, rest))
        R[name] = block_rule(R[name], blk, grid, P, A.float(), G.float())
        if P > enc_p:
            fusion = R[name][enc_p:enc_p + L]
            if name == "audio":  # the running mean over fused blocks feeds the next video block
                fused += 1
                total = fusion if total is None else total + fusion
                fusion = total / fused
    readout = sum(R[n][0, 0] for n in R)  # the class tokens' rows: the classifier reads both
    grads = torch.autograd.grad(readout, list(z.values()), allow_unused=True)
    out = {}
    for (n, g), gz in zip(first.items(), grads):
        gz = torch.zeros_like(z[n]) if gz is None else gz
        out[n] = gz[1:, 0].reshape(g)  # the grid columns; the class token's own column dropped
    return out


def explain(model: nn.Module, inputs: dict, *, target: int | None = None, head: str | None = None,
            block=CAM_BLOCKS, meta: dict | None = None) -> dict:
    """`block` is ignored: relevance runs through every block."""
    x = model_inputs(model, inputs)
    target = resolve_target(model, x, target, head)
    maps = relevance_maps(model, x, target, head)
    res = {"video": None, "audio": None, "target": target}
    for name, m in maps.items():
        res[name] = normalise(resize_to(m, x[name].shape[2:]))
    return res
