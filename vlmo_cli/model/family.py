"""The task-level calls of either model family, with the pipeline's inputs: text ids with an attention mask (1 = real
token, as the collator gives them), images, and for NLVR2 the two images of a pair.

Training objectives, evaluation, embedding, search and serving call these functions instead of a family's own methods;
this is the one place where :class:`~vlmo_cli.model.vlmo.VLMo` and :class:`~vlmo_cli.model.beit3.Beit3` part ways:

* VLMo: text first, then image; the pooled ``[CLS]`` of the fusion pass feeds its heads.
* BEiT-3: image first, then text; its heads (:mod:`vlmo_cli.model.beit3_heads`) read the encoder's features, and the
  text side takes a **padding** mask (True = padding), the complement of the attention mask. The collator's ``[CLS]``
  / ``[SEP]`` / ``[PAD]`` play BEiT-3's ``<s>`` / ``</s>`` / ``<pad>``: padding only matters through the mask, and
  text positions start at 2 whatever the ids.
"""

from __future__ import annotations

import torch

from .beit3 import Beit3

#: the head each task needs, per family (``retrieval``: the dual encoder's projections and temperature)
TASK_HEADS = {
    "vlmo": {"retrieval": "itc", "vqa": "vqa", "nlvr2": "nlvr2", "classify": "classify", "itm": "itm"},
    "beit3": {"retrieval": "retrieval", "vqa": "vqa", "nlvr2": "nlvr2", "classify": "pair_classify"},
}


def family_of(model: torch.nn.Module) -> str:
    """``"beit3"`` for a :class:`Beit3`, else ``"vlmo"``."""
    return "beit3" if isinstance(model, Beit3) else "vlmo"


def task_head(model: torch.nn.Module, task: str) -> str | None:
    """The name of the head ``task`` needs in ``model``'s family (``None``: the family has no such head)."""
    return TASK_HEADS[family_of(model)].get(task)


def has_task_head(model: torch.nn.Module, task: str) -> bool:
    head = task_head(model, task)
    return head is not None and head in model.config.heads


def _padding(attention_mask: torch.Tensor) -> torch.Tensor:
    return attention_mask == 0


def image_embeddings(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """L2-normalised dual-encoder embeddings of images ``[B, D]``."""
    if isinstance(model, Beit3):
        return model.retrieval_embeddings(image=pixels)[0]
    return model.encode_image(pixels)


def text_embeddings(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """L2-normalised dual-encoder embeddings of texts ``[B, D]``."""
    if isinstance(model, Beit3):
        return model.retrieval_embeddings(text_ids=input_ids, padding_mask=_padding(attention_mask))[1]
    return model.encode_text(input_ids, attention_mask)


def logit_scale(model: torch.nn.Module) -> torch.Tensor:
    """The learned contrastive temperature (its exponential multiplies the similarities)."""
    return model.retrieval_head.logit_scale if isinstance(model, Beit3) else model.logit_scale


def pair_logits(model: torch.nn.Module, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pixels: torch.Tensor) -> torch.Tensor:
    """Scores of a head over the fused image-text pair: ``task`` = ``vqa`` (answers), ``classify`` (classes) or, for
    VLMo, ``itm`` (no match / match)."""
    if isinstance(model, Beit3):
        pad = _padding(attention_mask)
        if task == "vqa":
            return model.vqa_logits(pixels, input_ids, pad)
        if task == "classify":
            return model.pair_classify_logits(pixels, input_ids, pad)
        raise ValueError(f"BEiT-3 has no {task!r} head over a pair (allowed: vqa, classify)")
    pooled = model.forward_pair(input_ids, attention_mask, pixels).pooled
    return {"vqa": model.vqa_logits, "classify": model.classify_logits, "itm": model.itm_logits}[task](pooled)


def nlvr2_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 pixels_0: torch.Tensor, pixels_1: torch.Tensor) -> torch.Tensor:
    """``[B, 2]`` scores of a statement about two images."""
    if isinstance(model, Beit3):
        return model.nlvr2_logits(pixels_0, pixels_1, input_ids, _padding(attention_mask))
    return model.nlvr2_logits(input_ids, attention_mask, pixels_0, pixels_1)


def image_patch_features(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Final patch features ``[B, P, D]`` of whole images (the image CLS dropped)."""
    if isinstance(model, Beit3):
        return model.encode_image(pixels).features[:, 1:]
    return model.forward_image(pixels).features[:, 1:]


def masked_data_view(model: torch.nn.Module):
    """``model`` through the masked-data-modelling interface of its family
    (:class:`~vlmo_cli.objectives.masked_data.MaskedDataModel`)."""
    from .beit3_masked_data import Beit3MaskedData
    from .masked_data import VLMoMaskedData

    return Beit3MaskedData(model) if isinstance(model, Beit3) else VLMoMaskedData(model)
