"""BEiT-3 through the masked-data-modelling interface (:class:`vlmo_cli.objectives.masked_data.MaskedDataModel`),
with the two pre-training heads the released fine-tuning checkpoints do not carry.

The paths are :class:`~vlmo_cli.model.beit3.Beit3`'s: ``encode_image`` with the masked positions (its vision mask
token), ``encode_text``, and ``encode_pair`` (image first, then text); the text padding mask is the inverse of the
batch's ``attention_mask``. The heads are new: an MLM head (dense → GELU → LayerNorm → vocabulary decoder, BERT's
shape) and a patch-target decoder (one linear layer to the target's width: ``patch_size² × 3`` pixels or a teacher's
features), initialised like unilm's heads.
"""

from __future__ import annotations

import torch
from torch import nn

from .beit3 import Beit3
from .beit3_heads import unilm_init


class Beit3MaskedData(nn.Module):
    """A BEiT-3 encoder plus MLM and patch-target heads, for masked data modelling.

    Args:
        encoder: the BEiT-3 model (with its language side).
        target_dim: outputs per patch; ``None`` = the patch's pixels (``patch_size² × in_chans``).
    """

    def __init__(self, encoder: Beit3, target_dim: int | None = None) -> None:
        super().__init__()
        cfg = encoder.config
        if encoder.text_embed is None:
            raise ValueError("masked data modelling needs a BEiT-3 model with a language side (language=true)")
        self.beit3 = encoder
        d = cfg.embed_dim
        self.mlm_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, cfg.vocab_size))
        self.patch_head = nn.Linear(d, target_dim or cfg.patch_size * cfg.patch_size * cfg.in_chans)
        self.mlm_head.apply(unilm_init)
        self.patch_head.apply(unilm_init)

    @property
    def patch_size(self) -> int:
        return self.beit3.config.patch_size

    def image_patches(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        return self.beit3.encode_image(pixel_values, patch_mask).features[:, 1:]

    def text_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.beit3.encode_text(input_ids, attention_mask == 0).features

    def pair_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                    patch_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.beit3(text_ids=input_ids, image=pixel_values, text_padding_mask=attention_mask == 0,
                         vision_masked_position=patch_mask)
        return out.text_features, out.image_features[:, 1:]

    def mlm_logits(self, token_features: torch.Tensor) -> torch.Tensor:
        return self.mlm_head(token_features)

    def patch_predictions(self, patch_features: torch.Tensor) -> torch.Tensor:
        return self.patch_head(patch_features)

    def forward(self, *args, **kwargs):  # nn.Module protocol: the pair path
        return self.pair_tokens(*args, **kwargs)

