"""VLMo through the masked-data-modelling interface (:class:`vlmo_cli.objectives.masked_data.MaskedDataModel`):
the image path with its patch mask (vision experts), the text path (language experts), the pair path (text first,
then image; VL experts on top), the MLM head and the MIM head (the ``mlm`` and ``mim`` heads of the model)."""

from __future__ import annotations

import torch

from .vlmo import VLMo


class VLMoMaskedData:
    """A view of ``model`` (no parameters of its own); the features are the final-normed ones, CLS dropped.

    Args:
        model: a VLMo with the ``mlm`` and ``mim`` heads.
    """

    def __init__(self, model: VLMo) -> None:
        if model.mlm_score is None or model.mim_head is None:
            raise ValueError("masked data modelling needs a VLMo with the 'mlm' and 'mim' heads")
        self.model = model

    def image_patches(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        return self.model.forward_image(pixel_values, patch_mask=patch_mask).features[:, 1:]

    def text_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.forward_text(input_ids, attention_mask).features

    def pair_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                    patch_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.forward_pair(input_ids, attention_mask, pixel_values, patch_mask=patch_mask)
        return out.text_features, out.image_features[:, 1:]

    def mlm_logits(self, token_features: torch.Tensor) -> torch.Tensor:
        return self.model.mlm_logits(token_features)

    def patch_predictions(self, patch_features: torch.Tensor) -> torch.Tensor:
        return self.model.mim_head(patch_features)
