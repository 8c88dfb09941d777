"""Gathering across processes with a world-size-1 fallback (the official code crashes without a process group)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_local_first(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 with the local tensor FIRST (keeping its autograd graph), then the other ranks in order.

    Only the local rows carry gradient: the official ``compute_itc`` / ``compute_itm_hardneg`` layout.
    """
    rank, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat([x] + parts[:rank] + parts[rank + 1 :], 0)


def gather_rank_order(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 in rank order, without gradient."""
    rank, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, 0)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather in rank order with gradients flowing back to every rank (open_clip's ``gather_with_grad``)."""
    rank, size = world()
    if size == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), 0)
