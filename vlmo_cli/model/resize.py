"""Adapting a state dict to another configuration of the same backbone.

* resolution change: relative-position image rows resized with BEiT's geometric-progression bicubic spline, or the
  absolute image position embeddings resized bicubically (CLS kept);
* text length change: absolute text positions truncated (or extended with fresh rows);
* NLVR2: modality embeddings expanded to 3 rows, row 2 := row 1.
"""

from __future__ import annotations

import torch

from .config import ModelConfig
from .position import resize_absolute_image_pos_embed, resize_image_relative_table


def adapt_state_dict(state: dict[str, torch.Tensor], old: ModelConfig, new: ModelConfig) -> dict[str, torch.Tensor]:
    """Return a copy of ``state`` whose position and modality tensors fit ``new``."""
    state = dict(state)
    key = "relative_position_bias_table"
    if key in state and new.relative_position and old.grid_size != new.grid_size:
        state[key] = resize_image_relative_table(state[key], old.grid_size, new.grid_size)
    key = "transformer.pos_embed"
    if key in state and not new.relative_position and old.grid_size != new.grid_size:
        state[key] = resize_absolute_image_pos_embed(state[key], new.grid_size)
    key = "text_embeddings.position_embeddings.weight"
    if key in state and state[key].shape[0] != new.max_text_len:
        table = state[key]
        if table.shape[0] > new.max_text_len:
            state[key] = table[: new.max_text_len].clone()
        else:
            extra = torch.randn(new.max_text_len - table.shape[0], table.shape[1], dtype=table.dtype) * 0.02
            state[key] = torch.cat([table, extra], 0)
    key = "token_type_embeddings.weight"
    if key in state and state[key].shape[0] < new.num_modality_types:
        rows = state[key]
        state[key] = torch.cat([rows, rows[1:2].expand(new.num_modality_types - rows.shape[0], -1)], 0).clone()
    return state
