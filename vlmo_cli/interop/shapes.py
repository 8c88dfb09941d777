"""Sizes read off a checkpoint's weights, shared by the converters that infer an architecture (BEiT-3, VQ-KD):
the block count, the resolution from a position table and a head count given by the user."""

from __future__ import annotations

import math
import re

import torch

from ..errors import CheckpointError


def numbered_blocks(state: dict[str, torch.Tensor], pattern: str, what: str, source: str) -> int:
    """How many blocks the keys matching ``pattern`` (one group: the block number) number 0..N-1; refused when the
    numbers have gaps."""
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    if found != set(range(len(found))):
        raise CheckpointError(f"{source}: {what} are not numbered 0..N-1 (found {sorted(found)})")
    return len(found)


def square_image_size(rows: int, leading: int, patch: int, table: str, leading_rows: str, source: str) -> int:
    """The resolution of a position table of ``rows`` rows: ``leading`` rows (``leading_rows`` in words) then one
    per patch of a square grid of ``patch``-pixel patches."""
    grid = math.isqrt(max(rows - leading, 0))
    if grid < 1 or grid * grid != rows - leading:
        raise CheckpointError(f"{source}: {table} has {rows} rows, not {leading_rows} + a square patch grid")
    return grid * patch


def given_heads(num_heads: int | None, dim: int, source: str) -> tuple[int, str] | None:
    """``(heads, "option --num-heads")`` when the user gave a head count that divides the width ``dim``; None when
    none was given."""
    if num_heads is None:
        return None
    if dim % num_heads:
        raise CheckpointError(f"{source}: option --num-heads {num_heads} does not divide the width {dim}")
    return num_heads, "option --num-heads"
