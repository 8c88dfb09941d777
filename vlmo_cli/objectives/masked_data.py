"""Masked data modelling (BEiT-3, Wang et al. 2022): one objective over masked images, masked texts and masked
image-text pairs, written against a small model interface (:class:`MaskedDataModel`) so that any multiway model
with an image path taking a patch mask, a text path, a pair path, an MLM head and a patch-target head can train with it.

Per part of a mixed batch (keys of :mod:`vlmo_cli.data.collate`, see :func:`masked_data_loss`):

* ``image``: block-masked patches (masked → the model's mask token) are predicted from the image path's patch
  features; the loss is the patch-target loss over the masked patches (normalised pixels, a teacher's features, or
  a visual tokenizer's ids as BEiT v2);
* ``text``: whole-word-masked tokens are predicted from the text path (cross-entropy, accuracy);
* ``pair``: the pair's masked text tokens are predicted from the pair path, the image visible; when the pair's
  image carries a ``patch_mask`` too, its masked patches are predicted as well.

The total is the plain sum of the parts' losses (each a mean over its masked positions).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from .classification import classification_loss, mim_loss, mlm_loss

#: ``(predictions [B, P, C], pixel_values [B, 3, H, W], patch_mask [B, P]) -> loss`` over the masked patches, or
#: ``(loss, accuracy)`` for a target of discrete ids
PatchTargetLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                           torch.Tensor | tuple[torch.Tensor, torch.Tensor]]


class MaskedDataModel(Protocol):
    """What masked data modelling needs of a model (VLMo: :class:`vlmo_cli.model.masked_data.VLMoMaskedData`)."""

    def image_patches(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """Patch features ``[B, P, D]`` of images whose masked patches were replaced by the mask token."""

    def text_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token features ``[B, T, D]`` of texts."""

    def pair_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                    patch_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Text token features ``[B, T, D]`` and image patch features ``[B, P, D]`` of image-text pairs."""

    def mlm_logits(self, token_features: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of token features ``[..., D]``."""

    def patch_predictions(self, patch_features: torch.Tensor) -> torch.Tensor:
        """Patch-target predictions of patch features ``[..., D]``."""


def pixel_target_loss(patch_size: int) -> PatchTargetLoss:
    """The stage-1 target: MSE to the per-patch normalised pixels (:func:`~.classification.mim_loss`)."""
    return lambda pred, pixels, mask: mim_loss(pred, pixels, mask, patch_size)


def feature_target_loss(teacher_patches: Callable[[torch.Tensor], torch.Tensor]) -> PatchTargetLoss:
    """A frozen teacher's patch features of the *unmasked* image as targets: ``1 − cos(prediction, feature)`` over
    the masked patches.

    Cosine rather than MSE: it ignores the teacher features' scale, which differs from model to model (and between
    layers), so the loss is bounded (0–2) and weighs like the other parts without a tuned weight; feature-distillation
    MIM (BEiT v2's VQ-KD training, EVA) matches features by cosine for the same reason.
    """

    def loss(pred: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher_patches(pixels)
        if target.shape[:2] != pred.shape[:2] or target.shape[-1] != pred.shape[-1]:
            raise ValueError(f"teacher patch features {tuple(target.shape)} do not match the predictions "
                             f"{tuple(pred.shape)}")
        cos = F.cosine_similarity(pred[mask].float(), target[mask].float(), dim=-1)
        return (1.0 - cos).mean() if cos.numel() else pred.sum() * 0.0

    return loss


def token_target_loss(tokenize: Callable[[torch.Tensor], torch.Tensor]) -> PatchTargetLoss:
    """A frozen visual tokenizer's ids of the *unmasked* image as targets (BEiT v2's masked image modelling):
    cross-entropy of the predictions ``[B, P, codebook]`` at the masked patches against the ids there, averaged over
    every masked patch of the batch, and the accuracy of the arg-max there.

    As unilm ``beit2/engine_for_pretraining.py``: the tokenizer labels the whole image (``input_ids =
    vqkd.get_codebook_indices(images)``), the labels are ``input_ids[bool_masked_pos]``, the loss is
    ``nn.CrossEntropyLoss()`` (mean) of the logits at those positions and ``mlm_acc`` the arg-max accuracy.

    Args:
        tokenize: ``pixel_values [B, 3, H, W] -> ids [B, P]`` (patches in row-major order).
    """

    def loss(pred: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            ids = tokenize(pixels)
        if ids.shape != pred.shape[:2]:
            raise ValueError(f"visual-token ids {tuple(ids.shape)} do not match the predictions {tuple(pred.shape)}")
        if not mask.any():
            return pred.sum() * 0.0, torch.zeros((), device=pred.device)
        return classification_loss(pred[mask], ids[mask])

    return loss


def _patch_target(patch_loss: PatchTargetLoss, pred: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(loss, accuracy or None)`` of a patch-target loss."""
    out = patch_loss(pred, pixels, mask)
    return out if isinstance(out, tuple) else (out, None)


def _masked_tokens(model: MaskedDataModel, features: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy of the MLM head applied to the masked positions only (labels −100 elsewhere)."""
    selected = labels != -100
    return mlm_loss(model.mlm_logits(features[selected]), labels[selected])


def masked_data_loss(model: MaskedDataModel, parts: dict[str, dict[str, torch.Tensor]],
                     patch_loss: PatchTargetLoss) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The summed loss of the parts present and the metrics to log.

    Args:
        model: the model, through the :class:`MaskedDataModel` interface.
        parts: ``image`` (``pixel_values``, ``patch_mask``), ``text`` (``mlm_input_ids``, ``attention_mask``,
            ``mlm_labels``) and ``pair`` (those of both, ``patch_mask`` optional); an absent or empty part is skipped.
        patch_loss: the patch-target loss (:func:`pixel_target_loss`, :func:`feature_target_loss`,
            :func:`token_target_loss`).

    Returns:
        ``(loss, metrics)``; metrics ``mdm_image_loss``, ``mdm_text_loss`` / ``mdm_text_acc``, ``mdm_pair_loss`` /
        ``mdm_pair_acc`` (masked text of pairs) and ``mdm_pair_image_loss`` (masked patches of pairs); a target of
        ids adds the masked-patch accuracies ``mdm_image_acc`` / ``mdm_pair_image_acc``.
    """
    losses: list[torch.Tensor] = []
    metrics: dict[str, torch.Tensor] = {}
    image = parts.get("image")
    if image and image["pixel_values"].shape[0]:
        mask = image["patch_mask"]
        loss, acc = _patch_target(patch_loss, model.patch_predictions(model.image_patches(image["pixel_values"], mask)),
                                  image["pixel_values"], mask)
        losses.append(loss)
        metrics["mdm_image_loss"] = loss.detach()
        if acc is not None:
            metrics["mdm_image_acc"] = acc
    text = parts.get("text")
    if text and text["mlm_input_ids"].shape[0]:
        features = model.text_tokens(text["mlm_input_ids"], text["attention_mask"])
        loss, acc = _masked_tokens(model, features, text["mlm_labels"])
        losses.append(loss)
        metrics.update(mdm_text_loss=loss.detach(), mdm_text_acc=acc)
    pair = parts.get("pair")
    if pair and pair["mlm_input_ids"].shape[0]:
        mask = pair.get("patch_mask")
        text_features, patch_features = model.pair_tokens(pair["mlm_input_ids"], pair["attention_mask"],
                                                          pair["pixel_values"], mask)
        loss, acc = _masked_tokens(model, text_features, pair["mlm_labels"])
        losses.append(loss)
        metrics.update(mdm_pair_loss=loss.detach(), mdm_pair_acc=acc)
        if mask is not None:
            image_loss, acc = _patch_target(patch_loss, model.patch_predictions(patch_features), pair["pixel_values"],
                                            mask)
            losses.append(image_loss)
            metrics["mdm_pair_image_loss"] = image_loss.detach()
            if acc is not None:
                metrics["mdm_pair_image_acc"] = acc
    if not losses:
        raise ValueError("a masked-data-modelling batch without any image, text or pair")
    return torch.stack(losses).sum(), metrics
