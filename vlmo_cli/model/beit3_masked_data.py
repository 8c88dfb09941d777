"""BEiT-3 through the masked-data-modelling interface (:class:`vlmo_cli.objectives.masked_data.MaskedDataModel`).

The paths are :class:`~vlmo_cli.model.beit3.Beit3`'s: ``encode_image`` with the masked positions (its vision mask
token), ``encode_text``, and the pair laid out image first, then text; the text padding mask is the complement of the
batch's ``attention_mask``. The heads are the model's ``mlm`` and ``mim`` heads (:mod:`vlmo_cli.model.beit3_heads`),
which no released checkpoint carries: ``vlmo pretrain-mdm`` adds them and fine-tuning drops them.
"""

from __future__ import annotations

import torch

from .beit3 import Beit3


class Beit3MaskedData:
    """A view of ``model`` (no parameters of its own); features are the encoder's output (final LayerNorm applied when
    the model has it), the image CLS dropped.

    Args:
        model: a BEiT-3 model with its language side and the ``mlm`` and ``mim`` heads.
    """

    def __init__(self, model: Beit3) -> None:
        if not (model.config.has_head("mlm") and model.config.has_head("mim")):
            raise ValueError("masked data modelling needs a BEiT-3 model with the 'mlm' and 'mim' heads")
        self.model = model

    def image_patches(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values, patch_mask).features[:, 1:]

    def text_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask == 0).features

    def pair_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                    patch_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(text_ids=input_ids, image=pixel_values, text_padding_mask=attention_mask == 0,
                         vision_masked_position=patch_mask)
        return out.text_features, out.image_features[:, 1:]

    def mlm_logits(self, token_features: torch.Tensor) -> torch.Tensor:
        return self.model.mlm_head(token_features)

    def patch_predictions(self, patch_features: torch.Tensor) -> torch.Tensor:
        return self.model.mim_head(patch_features)
