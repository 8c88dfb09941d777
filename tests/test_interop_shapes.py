"""Sizes the converters read off weights: block numbering, resolution from a position table, a given head count."""

from __future__ import annotations

import pytest
import torch

from vlmo_cli.errors import CheckpointError
from vlmo_cli.interop.shapes import given_heads, numbered_blocks, square_image_size


def test_blocks_are_counted_and_gaps_refused():
    state = {f"encoder.layers.{i}.w": torch.zeros(1) for i in (0, 1, 2)} | {"other": torch.zeros(1)}
    assert numbered_blocks(state, r"encoder\.layers\.(\d+)\.", "the blocks", "ckpt") == 3
    del state["encoder.layers.1.w"]
    with pytest.raises(CheckpointError, match=r"ckpt: the blocks are not numbered 0..N-1 \(found \[0, 2\]\)"):
        numbered_blocks(state, r"encoder\.layers\.(\d+)\.", "the blocks", "ckpt")


@pytest.mark.parametrize("rows, leading, patch, size", [(197, 1, 16, 224), (199, 3, 16, 224), (17, 1, 8, 32)])
def test_the_resolution_follows_from_the_rows(rows, leading, patch, size):
    assert square_image_size(rows, leading, patch, "the table", "CLS", "ckpt") == size


@pytest.mark.parametrize("rows", [1, 3, 198])
def test_a_table_that_is_not_a_square_grid_is_refused(rows):
    with pytest.raises(CheckpointError, match=f"ckpt: the table has {rows} rows, not CLS \\+ a square patch grid"):
        square_image_size(rows, 1, 16, "the table", "CLS", "ckpt")


def test_a_given_head_count_must_divide_the_width():
    assert given_heads(None, 768, "ckpt") is None
    assert given_heads(12, 768, "ckpt") == (12, "option --num-heads")
    with pytest.raises(CheckpointError, match="ckpt: option --num-heads 5 does not divide the width 768"):
        given_heads(5, 768, "ckpt")
