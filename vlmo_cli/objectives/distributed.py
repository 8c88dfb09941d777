"""Gathering across processes with a world-size-1 fallback (the official code crashes without a process group)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

_local_only = False


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Inside, every gather is the identity: for work done by one process alone (validation on the main process),
    where a collective would wait for processes that never join it."""
    global _local_only
    previous, _local_only = _local_only, True
    try:
        yield
    finally:
        _local_only = previous


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group or inside :func:`local_only`."""
    if not _local_only and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def max_across(value: int, device: torch.device | str = "cpu") -> int:
    """The largest ``value`` over all processes (``value`` itself with one process or inside :func:`local_only`)."""
    _, size = world()
    if size == 1:
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


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


def _owners(index: torch.Tensor, batch: int, rank: int, size: int, local_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(owner rank, row in the owner's batch) of positions in a gathered pool of ``size`` equal batches."""
    block, row = index // batch, index % batch
    if not local_first:
        return block, row
    others = torch.tensor([r for r in range(size) if r != rank], dtype=index.dtype, device=index.device)
    owner = torch.where(block == 0, torch.full_like(block, rank), others[(block - 1).clamp(min=0)])
    return owner, row


@torch.no_grad()
def fetch_pool_rows(tensors: list[torch.Tensor], index: torch.Tensor, local_first: bool = True) -> list[torch.Tensor]:
    """``gather(t)[index]`` for each tensor, without gathering the whole pool: only the requested rows travel.

    ``index`` addresses the pool that :func:`gather_local_first` (``local_first``) or :func:`gather_rank_order` would
    build from every process's equally sized batch. Requests are all-gathered (two integers per row), then one
    ``all_to_all_single`` per tensor sends each process exactly the rows it asked for — for ITM hard negatives that is
    B images per process instead of the world's whole batch of raw pixels.
    """
    rank, size = world()
    if size == 1:
        return [t[index] for t in tensors]
    batch = tensors[0].shape[0]
    owner, row = _owners(index, batch, rank, size, local_first)
    request = torch.stack([owner, row], 1).contiguous()
    requests = [torch.empty_like(request) for _ in range(size)]
    dist.all_gather(requests, request)
    send_rows = [r[r[:, 0] == rank, 1] for r in requests]  # what each process asked of me, in its order
    in_splits = [int(r.numel()) for r in send_rows]
    out_splits = [int((owner == src).sum()) for src in range(size)]
    # received rows arrive grouped by source process, each group in my request order
    arrival = torch.cat([torch.nonzero(owner == src).flatten() for src in range(size)])
    out = []
    for t in tensors:
        send = torch.cat([t[r] for r in send_rows]).contiguous()
        recv = t.new_empty((sum(out_splits), *t.shape[1:]))
        dist.all_to_all_single(recv, send, out_splits, in_splits)
        ordered = torch.empty_like(recv)
        ordered[arrival] = recv
        out.append(ordered)
    return out
