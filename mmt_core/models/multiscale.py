"""Multiscale (MViTv2) blocks and encoder for 2-D (mel x time, image) and 3-D (t x h x w) token grids.

A block sees `(B, P+N, C)` tokens: P *prefix* tokens (the class token, then any fusion tokens)
followed by the N tokens of a grid. Prefix tokens take part in attention and the MLP but skip the
Q/K/V pooling and the relative-position term, so adding fusion tokens never changes a grid.
Blocks return a plain tensor (Grad-CAM hooks the output); the grid after a block comes from
`block.output_grid(grid)`, pure arithmetic on the input grid.

Numerics follow torchvision's / timm's MViTv2 (the tests load their weights and compare logits).
Speed on CPU (issue 6) decides the form: `scaled_dot_product_attention` with the decomposed
relative position as an additive bias (one einsum per axis gives small per-axis terms; their
broadcast sum is written straight into the bias buffer, prefix key columns zeroed once). In
inference on CPU the grid queries go in chunks of ~1024 (whole slices of the first grid axis) with
one reused bias buffer per block, so the bias of a chunk is written and read while in cache
instead of a full (up to 134 MB) bias in fresh pages; the few prefix queries, which have no bias,
take one tiny SDPA call. Token-major (B, N, heads, d) tensors so that SDPA, the residual pooling
and the output projection need no transposed copies; one depthwise conv for all heads on a dense
channels-last copy (Conv2d on 2-D grids). Folding the rel-pos into augmented Q/K (one-hot key
columns) was measured and rejected: +144 QK dims cost more than the bias.

On GPU (issue 35) the bias is the biggest tensor of a block: Q/K/V and the bias are in the
autocast dtype (bf16; autocast would leave the pooled Q/K/V in fp32 after their LayerNorms), the
bias rows are padded to a multiple of 8 columns so the memory-efficient SDPA kernel takes it as
is, and its differentiable form (`_BiasSum`) writes the broadcast sum straight into that buffer.
`set_grad_checkpointing` recomputes each block in the backward pass instead of keeping its
activations.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

Grid = tuple[int, ...]


@dataclass
class EncoderConfig:
    input_size: tuple[int, ...] = (16, 224, 224)  # input grid: (T, H, W) video, (F, N) audio, (H, W) image
    in_chans: int = 3  # input channels (3 RGB, 1 log-mel)
    axis_names: tuple[str, ...] = ("t", "h", "w")  # names of the grid axes (rel-pos parameter names)
    patch_kernel: tuple[int, ...] = (3, 7, 7)  # patch-embed conv kernel (MViTv2 video)
    patch_stride: tuple[int, ...] = (2, 4, 4)  # patch-embed conv stride
    patch_padding: tuple[int, ...] = (1, 3, 3)  # patch-embed conv padding
    embed_dim: int = 96  # width of stage 1, doubled at each later stage (MViTv2)
    depths: tuple[int, ...] = (1, 2, 11, 2)  # blocks per stage (MViTv2-S)
    num_heads: int = 1  # heads of stage 1, doubled at each later stage
    mlp_ratio: float = 4.0  # MLP hidden width / block width
    kernel_qkv: tuple[int, ...] = (3, 3, 3)  # depthwise pooling-conv kernel for Q, K and V
    stride_q: tuple[tuple[int, ...], ...] = ((1, 1, 1), (1, 2, 2), (1, 2, 2), (1, 2, 2))  # Q stride at each stage's first block
    stride_kv_adaptive: tuple[int, ...] = (1, 8, 8)  # K/V stride of stage 1, divided by each Q stride after
    residual_pool: bool = True  # MViTv2: add the pooled Q to the attention output
    residual_prefix: bool = False  # also add it on prefix tokens (timm: yes; torchvision/SlowFast: no)
    cls_token: bool = True  # a class token is the first prefix token (E_CLS)
    global_pool: str = "token"  # "token": E_CLS is the class token; "avg": mean of the grid tokens
    qkv_bias: bool = True  # bias in the QKV projection
    norm_eps: float = 1e-6  # LayerNorm epsilon (MViTv2)


def _prod(xs) -> int:
    n = 1
    for x in xs:  # a loop, not math.prod of a generator: torch.compile traces it without a graph break
        n *= int(x)
    return n


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability p."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


def pool_tokens(x: Tensor, pool, grid: Grid, num_prefix: int) -> tuple[Tensor, Grid]:
    """Pool the grid part of token-major (B, P+N, *channels) tokens with `pool`, a function on
    (B, C, *grid); prefix tokens pass through untouched. Channels may be (C,) or (heads, d)."""
    B, chans = x.shape[0], x.shape[2:]
    prefix, tokens = x[:, :num_prefix], x[:, num_prefix:]
    # A dense channels-last input: (B, *grid, C) -> (B, C, *grid) with C the fastest axis. The
    # tokens are often a strided view (Q/K/V of the fused projection); the copy makes the
    # depthwise conv take its fast channels-last path (2x faster than on the strided view).
    t = pool(tokens.reshape(B, *grid, -1).contiguous().movedim(-1, 1))  # (B, C, *grid'), channels-last out
    new_grid = tuple(t.shape[2:])
    t = t.movedim(1, -1).reshape(B, -1, *chans)  # (B, N', *channels)
    return (torch.cat((prefix, t), dim=1) if num_prefix else t), new_grid


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype autocast computes matmuls in on x's device, or x's own dtype without autocast."""
    dev = x.device.type
    if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):  # (meta etc. have no autocast)
        return torch.get_autocast_dtype(dev)
    return x.dtype


def rel_pos_table(table: Tensor, q_len: int, k_len: int) -> Tensor:
    """(2*max-1, d) table -> (q_len, k_len, d) embeddings R[p(i), p(j)] along one axis; when Q and
    K have different lengths the coordinates are scaled to the finer one (MViTv2)."""
    need = 2 * max(q_len, k_len) - 1
    if table.shape[0] != need:  # another input size than the model was built for
        table = F.interpolate(table.t()[None], size=need, mode="linear")[0].t()
    q_ratio = max(k_len / q_len, 1.0)
    k_ratio = max(q_len / k_len, 1.0)
    dist = (torch.arange(q_len, device=table.device)[:, None] * q_ratio
            - (torch.arange(k_len, device=table.device)[None, :] + (1.0 - k_len)) * k_ratio)
    # index_select: the same gather as table[dist], ~2x faster on CPU than advanced indexing
    return table.index_select(0, dist.long().flatten()).view(q_len, k_len, -1)  # (q_len, k_len, d)


_LETTERS = "defgh"


def rel_pos_terms(q: Tensor, q_grid: Grid, k_grid: Grid, tables: list[Tensor]) -> list[Tensor]:
    """The per-axis terms of the decomposed relative position (eq. 2), E_rel = sum of them:
    q (B, Nq, heads, d) token-major grid queries -> one (B, heads, *q_grid, 1.., k_a, ..1) tensor
    per axis a (one einsum each; no Nq x Nk tensor)."""
    B, _, h, d = q.shape
    D = len(q_grid)
    r_q = q.reshape(B, *q_grid, h, d)  # (B, *q_grid, heads, d)
    qs = _LETTERS[:D]
    terms = []
    for a in range(D):
        R = rel_pos_table(tables[a], q_grid[a], k_grid[a]).to(q.dtype)  # (q_a, k_a, d)
        term = torch.einsum(f"b{qs}nc,{qs[a]}kc->bn{qs}k", r_q, R)  # (B, heads, *q_grid, k_a)
        shape = [B, h, *q_grid] + [1] * D
        shape[2 + D + a] = k_grid[a]
        # The einsum output is head-minor in memory; order the small terms like the bias so
        # the big sum streams through memory in order.
        terms.append(term.contiguous().view(shape))  # (B, heads, *q_grid, 1.., k_a, ..1)
    return terms


def _sum_into(terms: list[Tensor], out: Tensor) -> None:
    """out[...] = sum(terms), broadcast; the full-size tensor is written once, in place (no
    autograd: `_BiasSum` is the differentiable wrapper)."""
    *head, last = terms  # 3-D grids: the smaller terms are summed first
    small = sum(head[1:], head[0]) if head else last.new_zeros(())
    torch.add(small, last, out=out)


def bias_buffer(like: Tensor, B: int, h: int, rows: int, num_prefix: int, Nk: int) -> Tensor:
    """An uninitialised (B, heads, rows, P+Nk) bias in `like`'s dtype and device, its P prefix key
    columns zero, allocated with the last dimension padded to a multiple of 8: the memory-efficient
    SDPA kernels need every stride but the last to be a multiple of 8 and otherwise pad the mask
    with a full copy (torch's `preprocess_mask`). Returns the view of the first P+Nk columns; the
    padding is never read."""
    cols = num_prefix + Nk
    buf = like.new_empty(B, h, rows, -(-cols // 8) * 8)  # (B, heads, rows, cols rounded up to 8)
    bias = buf[..., :cols]
    bias[..., :num_prefix].zero_()  # prefix keys have no grid position
    return bias


class _BiasSum(torch.autograd.Function):
    """The rel-pos bias from its per-axis terms, differentiable, without a full-size temporary:
    forward writes sum(terms) straight into a `bias_buffer` (prefix rows and columns zero);
    backward reduces the bias's gradient onto each term's broadcast shape."""

    @staticmethod
    def forward(ctx, prefix_rows: int, prefix_cols: int, q_grid: Grid, k_grid: Grid, *terms: Tensor):
        B, h = terms[0].shape[:2]
        bias = bias_buffer(terms[0], B, h, prefix_rows + _prod(q_grid), prefix_cols, _prod(k_grid))
        bias[:, :, :prefix_rows].zero_()  # prefix queries have no grid position
        _sum_into(list(terms), bias[:, :, prefix_rows:, prefix_cols:].view(B, h, *q_grid, *k_grid))
        ctx.grid_part = (prefix_rows, prefix_cols, (B, h, *q_grid, *k_grid))
        ctx.term_shapes = [t.shape for t in terms]
        return bias  # (B, heads, P_rows+Nq, P_cols+Nk), a view of the padded buffer

    @staticmethod
    def backward(ctx, grad: Tensor):
        pr, pc, shape = ctx.grid_part
        g = grad[:, :, pr:, pc:].reshape(shape)  # (B, heads, *q_grid, *k_grid), a view when it can be
        grads = [g.sum_to_size(s) if need else None
                 for s, need in zip(ctx.term_shapes, ctx.needs_input_grad[4:])]
        return (None, None, None, None, *grads)


def rel_pos_bias(q: Tensor, q_grid: Grid, k_grid: Grid, tables: list[Tensor],
                 num_prefix: int = 0, *, prefix_rows: bool = True) -> Tensor:
    """Decomposed relative position (eq. 2): E_rel[i, j] = sum_axis Q_i . R_axis[p(i), p(j)].

    q: (B, P+Nq, heads, d) token-major queries, the P prefix tokens first. Returns the additive
    attention bias (B, heads, P+Nq, P+Nk) in q's dtype, zero wherever a prefix token is involved
    (`prefix_rows=False`: without the P prefix query rows), as a view of a `bias_buffer`.
    """
    P = num_prefix
    terms = rel_pos_terms(q[:, P:], q_grid, k_grid, tables)
    rows = P if prefix_rows else 0
    if torch.compiler.is_compiling():
        # torch.compile cannot trace `out=` into a strided view; inductor fuses these plain ops
        # (broadcast sum, zero prefix, padding to 8) into one kernel that writes the buffer.
        B, h, Nk = q.shape[0], q.shape[2], _prod(k_grid)
        cols = P + Nk
        grid_part = sum(terms[1:], terms[0]).reshape(B, h, _prod(q_grid), Nk)  # (B, heads, Nq, Nk)
        return F.pad(grid_part, (P, -(-cols // 8) * 8 - cols, rows, 0))[..., :cols]
    return _BiasSum.apply(rows, P, tuple(q_grid), tuple(k_grid), *terms)


class MultiScaleAttention(nn.Module):
    """Pooling attention: Q, K, V pooled by depthwise convs (grid tokens only), then
    softmax(QK^T/sqrt(d) + E_rel) V + Q (residual pooling)."""

    def __init__(self, *, dim: int, dim_out: int, num_heads: int, input_size: Grid,
                 kernel_q: Grid, kernel_kv: Grid, stride_q: Grid, stride_kv: Grid,
                 axis_names: tuple[str, ...], qkv_bias: bool = True, residual_pool: bool = True,
                 residual_prefix: bool = False, norm_eps: float = 1e-6):
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"dim_out {dim_out} is not divisible by {num_heads} heads")
        nd = len(input_size)
        if nd not in (2, 3) or not (len(kernel_q) == len(kernel_kv) == len(stride_q) == len(stride_kv) == nd):
            raise ValueError(f"kernels/strides must all have {nd} entries (2-D or 3-D grids)")
        self.num_heads = num_heads
        self.head_dim = dim_out // num_heads
        self.dim_out = dim_out
        self.residual_pool = residual_pool
        self.residual_prefix = residual_prefix
        self.chunk_queries = 1024  # grid queries per CPU inference attention call (>= 768: SDPA's big blocks)
        # Explicit softmax (off by default; `explicit_attention`): the attention probabilities
        # are kept in `last_attn`, (B, heads, P+Nq, P+Nk), with their gradient (explainers).
        self.explicit = False
        self.last_attn: Tensor | None = None
        self.axis_names = tuple(axis_names)
        self.qkv = nn.Linear(dim, 3 * dim_out, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)
        conv = nn.Conv2d if nd == 2 else nn.Conv3d
        hd = self.head_dim

        def make_pool(kernel, stride):
            if _prod(kernel) == 1 and _prod(stride) == 1:
                return None, None
            pad = tuple(k // 2 for k in kernel)
            return (conv(hd, hd, kernel, stride=stride, padding=pad, groups=hd, bias=False),
                    nn.LayerNorm(hd, eps=norm_eps))

        self.pool_q, self.norm_q = make_pool(kernel_q, stride_q)
        self.pool_k, self.norm_k = make_pool(kernel_kv, stride_kv)
        self.pool_v, self.norm_v = make_pool(kernel_kv, stride_kv)
        # One table per axis, sized for the grid this block is built for (as torchvision/timm).
        for name, size, sq, skv in zip(axis_names, input_size, stride_q, stride_kv):
            length = 2 * max(size // sq, size // skv) - 1
            p = nn.Parameter(torch.zeros(max(length, 1), hd))
            nn.init.trunc_normal_(p, std=0.02)
            setattr(self, f"rel_pos_{name}", p)

    def rel_tables(self) -> list[Tensor]:
        return [getattr(self, f"rel_pos_{n}") for n in self.axis_names]

    def _pool(self, x: Tensor, pool, norm, grid: Grid, num_prefix: int) -> tuple[Tensor, Grid]:
        if pool is None:
            return x, grid
        # One depthwise conv over all heads (their kernels are shared): weight repeated per head.
        conv = F.conv2d if isinstance(pool, nn.Conv2d) else F.conv3d
        weight = pool.weight.repeat(self.num_heads, *(1,) * (pool.weight.dim() - 1))
        x, grid = pool_tokens(x, lambda t: conv(t, weight, None, pool.stride, pool.padding,
                                                groups=weight.shape[0]), grid, num_prefix)
        return norm(x), grid  # the norm covers prefix tokens too (MViTv2)

    def forward(self, x: Tensor, grid: Grid, num_prefix: int) -> Tensor:
        B, N, _ = x.shape
        # Token-major (B, N, heads, d) throughout: pooling, SDPA (on transposed views), the
        # residual and the output projection then need no transposed copies.
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).unbind(2)
        q, q_grid = self._pool(q, self.pool_q, self.norm_q, grid, num_prefix)  # (B, P+Nq, heads, d)
        k, k_grid = self._pool(k, self.pool_k, self.norm_k, grid, num_prefix)
        v, _ = self._pool(v, self.pool_v, self.norm_v, grid, num_prefix)
        # Autocast runs LayerNorm in fp32, so pooled Q/K/V leave their norms in fp32; the bias
        # (built from Q) and the attention must run in the compute dtype instead, or the bias
        # is allocated in fp32 and SDPA's autocast copies it to bf16.
        dtype = compute_dtype(x)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)

        P, h = num_prefix, self.num_heads
        kh, vh = k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, P+Nk, d) views
        if self.explicit:
            out = self._explicit(q, kh, vh, q_grid, k_grid, P)
        else:
            out = self._sdpa(q, kh, vh, q_grid, k_grid, P)
        if self.residual_pool:  # residual pooling, on prefix tokens only if asked
            r = 0 if self.residual_prefix else P
            out[:, r:] += q[:, r:]
        return self.proj(out.reshape(B, -1, self.dim_out))  # (B, P+Nq, heads*d)

    def _explicit(self, q: Tensor, kh: Tensor, vh: Tensor, q_grid: Grid, k_grid: Grid,
                  P: int) -> Tensor:
        """softmax(QK^T/sqrt(d) + E_rel) V written out, keeping A (and its gradient)."""
        bias = rel_pos_bias(q, q_grid, k_grid, self.rel_tables(), P)  # (B, heads, P+Nq, P+Nk)
        qh = q.transpose(1, 2)  # (B, heads, P+Nq, d)
        attn = (qh @ kh.transpose(-2, -1) * self.head_dim ** -0.5 + bias).softmax(-1)
        if attn.requires_grad:
            attn.retain_grad()
        self.last_attn = attn
        return (attn @ vh).transpose(1, 2).contiguous()  # (B, P+Nq, heads, d), a fresh tensor

    def _sdpa(self, q: Tensor, kh: Tensor, vh: Tensor, q_grid: Grid, k_grid: Grid,
              P: int) -> Tensor:
        B, h = q.shape[0], self.num_heads
        # Prefix queries have no bias. SDPA's output follows the query's layout, so the
        # transposes back to token-major are free views.
        outs = [F.scaled_dot_product_attention(q[:, :P].transpose(1, 2), kh, vh).transpose(1, 2)] if P else []
        # Grid queries: with autograd or on GPU, one call with the whole bias (`_BiasSum`).
        # Otherwise (CPU inference) in chunks of whole slices of the first grid axis, the bias of
        # a chunk built in one reused buffer: a full bias (up to 134 MB in MAT-B) is written to
        # fresh pages (page faults) and read back from RAM; a chunk's stays in cache.
        if torch.is_grad_enabled() or not q.is_cpu:
            bias = rel_pos_bias(q, q_grid, k_grid, self.rel_tables(), P, prefix_rows=False)
            outs.append(F.scaled_dot_product_attention(q[:, P:].transpose(1, 2), kh, vh,
                                                       attn_mask=bias).transpose(1, 2))
            return torch.cat(outs, dim=1)  # (B, P+Nq, heads, d), a fresh tensor (residual adds in place)
        terms = rel_pos_terms(q[:, P:], q_grid, k_grid, self.rel_tables())
        row = _prod(q_grid[1:])  # queries per slice of the first axis
        step = max(1, self.chunk_queries // row)
        bias = bias_buffer(q, B, h, min(step, q_grid[0]) * row, P, _prod(k_grid))  # (B, heads, chunk, P+Nk)
        for a0 in range(0, q_grid[0], step):
            a1 = min(a0 + step, q_grid[0])
            b = bias[:, :, :(a1 - a0) * row]
            _sum_into([t[:, :, a0:a1] for t in terms], b[..., P:].view(B, h, a1 - a0, *q_grid[1:], *k_grid))
            qc = q[:, P + a0 * row:P + a1 * row].transpose(1, 2)  # (B, heads, chunk, d)
            outs.append(F.scaled_dot_product_attention(qc, kh, vh, attn_mask=b).transpose(1, 2))
        return torch.cat(outs, dim=1)  # (B, P+Nq, heads, d), a fresh tensor


@contextlib.contextmanager
def explicit_attention(model: nn.Module):
    """Within the block, every MultiScaleAttention of `model` computes its softmax explicitly and
    keeps the probabilities in `.last_attn` (with `.grad` after a backward pass); the outputs
    equal the SDPA path's (a test). Yields the attention modules in `model.modules()` order."""
    mods = [m for m in model.modules() if isinstance(m, MultiScaleAttention)]
    old = [m.explicit for m in mods]
    for m in mods:
        m.explicit, m.last_attn = True, None
    try:
        yield mods
    finally:
        for m, o in zip(mods, old):
            m.explicit, m.last_attn = o, None


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dim_out: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MultiScaleBlock(nn.Module):
    """x' = pool(x) + MSA(LN(x));  out = x' + MLP(LN(x'))  (eq. 1), width change in the attention
    (MViTv2 dim_mul_in_att: the shortcut is a Linear of LN(x), pooled like Q)."""

    def __init__(self, *, dim: int, dim_out: int, num_heads: int, input_size: Grid,
                 kernel_q: Grid, kernel_kv: Grid, stride_q: Grid, stride_kv: Grid,
                 axis_names: tuple[str, ...], mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, residual_pool: bool = True, residual_prefix: bool = False,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.stride_q, self.kernel_q = tuple(stride_q), tuple(kernel_q)
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiScaleAttention(
            dim=dim, dim_out=dim_out, num_heads=num_heads, input_size=input_size,
            kernel_q=kernel_q, kernel_kv=kernel_kv, stride_q=stride_q, stride_kv=stride_kv,
            axis_names=axis_names, qkv_bias=qkv_bias, residual_pool=residual_pool,
            residual_prefix=residual_prefix, norm_eps=norm_eps)
        self.shortcut_proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        self.shortcut_pool = None
        if _prod(stride_q) > 1:
            kernel = tuple(s + 1 if s > 1 else s for s in stride_q)
            pool = nn.MaxPool2d if len(stride_q) == 2 else nn.MaxPool3d
            self.shortcut_pool = pool(kernel, stride=stride_q, padding=tuple(k // 2 for k in kernel))
        self.norm2 = nn.LayerNorm(dim_out, eps=norm_eps)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio), dim_out)

    def output_grid(self, grid: Grid) -> Grid:
        """The grid after this block (Q pooling: conv arithmetic, kernel k, padding k//2)."""
        if self.attn.pool_q is None:
            return tuple(grid)
        return tuple((g + 2 * (k // 2) - k) // s + 1 for g, k, s in zip(grid, self.kernel_q, self.stride_q))

    def forward(self, x: Tensor, grid: Grid, num_prefix: int = 1) -> Tensor:
        """x: (B, P+N, dim) with N = prod(grid) -> (B, P+N', dim_out), N' = prod(output_grid)."""
        if x.shape[1] != num_prefix + _prod(grid):
            raise ValueError(f"got {x.shape[1]} tokens, expected {num_prefix} prefix + grid {tuple(grid)}")
        x_norm = self.norm1(x)
        shortcut = x if self.shortcut_proj is None else self.shortcut_proj(x_norm)
        if self.shortcut_pool is not None:
            shortcut = pool_tokens(shortcut, self.shortcut_pool, grid, num_prefix)[0]
        x = shortcut + drop_path(self.attn(x_norm, grid, num_prefix), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class MultiscaleEncoder(nn.Module):
    """Patch embed -> multiscale blocks (stage transitions pool Q by 2 and double the width) ->
    final norm. `forward_features` gives normed tokens, `forward_head` the pooled embedding E_CLS.
    The blocks are public so the MMT can interleave two encoders and add fusion tokens."""

    def __init__(self, cfg: EncoderConfig, *, drop_path: float = 0.0):
        super().__init__()
        nd = len(cfg.input_size)
        if cfg.global_pool not in ("token", "avg") or (cfg.global_pool == "token" and not cfg.cls_token):
            raise ValueError("global_pool must be 'avg', or 'token' with cls_token=True")
        if len(cfg.axis_names) != nd or len(cfg.kernel_qkv) != nd or len(cfg.stride_q) != len(cfg.depths):
            raise ValueError("axis_names/kernel_qkv need one entry per grid axis, stride_q one per stage")
        self.cfg = cfg
        conv = nn.Conv2d if nd == 2 else nn.Conv3d
        self.patch_embed = conv(cfg.in_chans, cfg.embed_dim, cfg.patch_kernel,
                                stride=cfg.patch_stride, padding=cfg.patch_padding)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.cls_token else None
        size = [s // st for s, st in zip(cfg.input_size, cfg.patch_stride)]  # torchvision/timm sizing
        total = sum(cfg.depths)
        rates = [drop_path * i / max(total - 1, 1) for i in range(total)]
        dim, stride_kv = cfg.embed_dim, list(cfg.stride_kv_adaptive)
        blocks = []
        for stage, depth in enumerate(cfg.depths):
            dim_out = cfg.embed_dim * 2 ** stage
            sq_stage = cfg.stride_q[stage]
            if _prod(sq_stage) > 1:  # K/V are pooled less where Q already is (adaptive stride)
                stride_kv = [max(s // q, 1) for s, q in zip(stride_kv, sq_stage)]
            for i in range(depth):
                sq = sq_stage if i == 0 else (1,) * nd
                blocks.append(MultiScaleBlock(
                    dim=dim, dim_out=dim_out, num_heads=cfg.num_heads * 2 ** stage,
                    input_size=tuple(size), kernel_q=cfg.kernel_qkv, kernel_kv=cfg.kernel_qkv,
                    stride_q=sq, stride_kv=tuple(stride_kv), axis_names=cfg.axis_names,
                    mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, drop_path=rates[len(blocks)],
                    residual_pool=cfg.residual_pool, residual_prefix=cfg.residual_prefix,
                    norm_eps=cfg.norm_eps))
                size = [s // q for s, q in zip(size, sq)]
                dim = dim_out
        self.blocks = nn.ModuleList(blocks)
        self.num_features = dim
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.grids: list[Grid] = []  # grid after each block, from the last forward (for Grad-CAM)
        self.grad_checkpointing = False  # recompute block activations in backward (set_grad_checkpointing)
        self.apply(_init_weights)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing (timm's name): while training with autograd on, each block
        keeps only its input and recomputes its activations in the backward pass
        (`torch.utils.checkpoint`, non-reentrant: the RNG state is restored, so drop-path draws
        the same samples again; a test checks the gradients are unchanged). Every caller of
        `run_blocks` gets it, the MMT's fusion blocks included."""
        self.grad_checkpointing = enable

    @property
    def num_prefix(self) -> int:
        return 1 if self.cls_token is not None else 0

    def embed(self, x: Tensor) -> tuple[Tensor, Grid]:
        """(B, C, *input) -> (B, P+N, C0) tokens with the class token first, and the patch grid."""
        if x.dim() != 2 + len(self.cfg.input_size) or x.shape[1] != self.cfg.in_chans:
            raise ValueError(f"expected input (B, {self.cfg.in_chans}, {len(self.cfg.input_size)} "
                             f"grid axes), got {tuple(x.shape)}")
        x = self.patch_embed(x)  # (B, C0, *grid)
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)  # (B, N, C0)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        self.grids = []
        return x, grid

    def run_blocks(self, x: Tensor, grid: Grid, start: int = 0, stop: int | None = None,
                   num_prefix: int | None = None) -> tuple[Tensor, Grid]:
        """Run blocks[start:stop] on (B, P+N, C) tokens; returns the tokens and the new grid."""
        p = self.num_prefix if num_prefix is None else num_prefix
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for blk in self.blocks[start:stop]:
            out_grid = blk.output_grid(grid)
            self.grids.append(out_grid)  # before the block runs: Grad-CAM reshapes inside its hook
            if recompute:
                x = checkpoint(blk, x, grid, p, use_reentrant=False)
            else:
                x = blk(x, grid, p)
            grid = out_grid
        return x, grid

    def forward_features(self, x: Tensor) -> Tensor:
        x, grid = self.embed(x)
        x, _ = self.run_blocks(x, grid)
        return self.norm(x)

    def forward_head(self, x: Tensor, num_prefix: int | None = None) -> Tensor:
        """Normed tokens -> the pooled embedding E_CLS, (B, C)."""
        if self.cfg.global_pool == "token":
            return x[:, 0]
        return x[:, self.num_prefix if num_prefix is None else num_prefix:].mean(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def grid_to_map(tokens: Tensor, grid: Grid) -> Tensor:
    """Grad-CAM reshape: (B, P+N, C) -> (B, C, *grid), dropping the P prefix tokens."""
    n = _prod(grid)
    x = tokens[:, tokens.shape[1] - n:]  # (B, N, C)
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)  # (B, C, *grid)
