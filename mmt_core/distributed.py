"""What the training loop needs from torch.distributed, in one place: joining the process group,
per-step batch sizes over a CPU channel, and a differentiable gather of rows for the contrastive
losses over the global batch (the paper's 64 = 8 GPUs x 8).

One process (no process group) is the degenerate case of every function here: sizes are the
local size, gathers return their input.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

from .evaluation import resolve_device


def setup(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun (WORLD_SIZE > 1) joins the process group:
    nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def cpu_group():
    """A gloo group for small host-side values (batch sizes, RNG states): exchanging them over
    NCCL would need a device tensor and a host sync to read it back. None = the default group
    (already gloo, or no process group at all)."""
    if not dist.is_initialized() or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


def all_sizes(n: int, group=None) -> list[int]:
    """Every rank's local batch size (rows after broken clips were dropped), as host ints."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [n]
    t = torch.tensor([n], dtype=torch.int64)
    parts = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t, group=group)
    return [int(p) for p in parts]


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (epoch totals: loss·n, correct, samples, skipped)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_objects(obj) -> list:
    """Every rank's `obj` (small picklable values, e.g. RNG states), in rank order."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class _GatherRows(torch.autograd.Function):
    """Concatenate every rank's rows (dim 0, sizes may differ) in rank order. Backward: every
    rank's loss saw the whole gathered tensor, so the gradient of this rank's rows is the sum of
    all ranks' gradients for them (an all-reduce, then this rank's slice)."""

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int]) -> Tensor:
        rank = dist.get_rank()
        ctx.rows = (sum(sizes[:rank]), sum(sizes[:rank + 1]))
        m = max(sizes)
        padded = x.new_zeros((m, *x.shape[1:]))
        padded[:x.shape[0]] = x  # all_gather needs equal shapes: pad to the largest batch
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])  # (sum(sizes), ...)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rows[0]:ctx.rows[1]], None


def row_gatherer(sizes: list[int]):
    """x (sizes[rank], ...) -> (sum(sizes), ...) on every rank, differentiable; the identity for
    one process. With it every rank computes the loss of the whole global batch: DDP's gradient
    average then gives exactly the single-process gradient of that loss on the concatenated
    batch (each rank's rows receive world x their gradient, DDP divides by world)."""
    if len(sizes) == 1:
        return lambda x: x
    return lambda x: _GatherRows.apply(x, sizes)
