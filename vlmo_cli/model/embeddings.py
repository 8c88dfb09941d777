"""Input embeddings: BERT-style text embeddings and modality (token-type) embeddings. Image patches are embedded
by ``timm.layers.PatchEmbed`` (a non-overlapping ``patch_size`` convolution named ``proj``, as the official model's)."""

from __future__ import annotations

import torch
from torch import nn


class TextEmbeddings(nn.Module):
    """BERT embeddings with the official semantics (transformers 4.8 ``BertEmbeddings``).

    word + BERT token-type row 0 (always added) [+ absolute position] → LayerNorm(eps 1e-12) → dropout.
    ``position_embeddings`` exists in every official checkpoint; it is only *added* in the absolute-position variant
    (base_plus). In the relative-position variant it is kept frozen for checkpoint compatibility.

    Args:
        vocab_size: vocabulary size.
        dim: width.
        max_positions: rows of the position table (``max_text_len``).
        absolute_positions: add position embeddings.
        dropout: dropout probability after the LayerNorm.
        pad_token_id: padding id.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        max_positions: int,
        absolute_positions: bool,
        dropout: float,
        pad_token_id: int = 0,
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_positions, dim)
        self.token_type_embeddings = nn.Embedding(2, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        self.absolute_positions = absolute_positions
        if not absolute_positions:
            self.position_embeddings.weight.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        if self.absolute_positions:
            n = input_ids.shape[1]
            if n > self.position_embeddings.num_embeddings:
                raise ValueError(f"text of {n} tokens exceeds the {self.position_embeddings.num_embeddings} positions")
            x = x + self.position_embeddings.weight[:n]
        return self.dropout(self.LayerNorm(x))
