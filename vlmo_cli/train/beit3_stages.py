"""The fine-tuning tasks of a BEiT-3 model (``[model] family = "beit3"``) as data, like :data:`.stages.STAGE_DEFS`.

The objectives follow microsoft/unilm ``beit3/engine_for_finetuning.py`` and ``beit3/modeling_finetune.py``:

* VQA (``VQAHandler``): ``BCEWithLogitsLoss(reduction="mean")`` on the soft answer scores, times the number of
  answers (``labels.shape[1]``), on the VQA head over the pair (image first); the VQA model has no final LayerNorm
  (``args.normalize_output = False`` in ``beit3_*_vqav2``).
* NLVR2 (``NLVR2Handler``): cross entropy on the head over ``[image CLS, text CLS]`` of both (image, text) passes.
* retrieval (``BEiT3ForRetrieval``): ``ClipLoss`` with its defaults (features of all processes gathered without
  gradient except the local ones, every process the global symmetric loss) over the L2-normalised vision / language
  projections of the two CLS tokens, at temperature ``logit_scale.exp()`` (learned, from log(1/0.07), unclamped).
* classify (this project's pair classification): cross entropy on ``pair_classify``, the VQA head's layout.

Every parameter of a fine-tune trains (the unilm fine-tuning scripts freeze nothing).

Pre-training: ``pretrain.mdm``, masked data modelling (:mod:`vlmo_cli.train.mdm`, the objective both families share),
on a BEiT-3 with the ``mlm`` and ``mim`` heads; unilm releases no BEiT-3 pre-training code, so nothing here is taken
from it beyond the architecture.
"""

from __future__ import annotations

from ..model.beit3 import Beit3
from ..model.beit3_config import Beit3Config
from ..model.family import logit_scale, nlvr2_logits, pair_logits
from ..objectives.classification import classification_loss, vqa_loss, vqa_score
from ..objectives.contrastive import contrastive_loss
from . import mdm
from .stages import STAGE_DEFS, Batch, StageDef, StepOutput, everything, mdm_objective, mdm_validate


# ---------------------------------------------------------------------- objectives
def beit3_vqa_objective(model: Beit3, batch: Batch, task) -> StepOutput:
    logits = pair_logits(model, "vqa", batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    loss = vqa_loss(logits, batch["vqa_targets"])  # BCE (mean) × answers, as VQAHandler.train_batch
    score = vqa_score(logits.detach(), batch["vqa_targets"]) / max(1, logits.shape[0])
    return StepOutput(loss, {"vqa_loss": loss.detach(), "vqa_score": score})


def beit3_nlvr2_objective(model: Beit3, batch: Batch, task) -> StepOutput:
    logits = nlvr2_logits(model, batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                          batch["pixel_values_1"])
    loss, acc = classification_loss(logits, batch["labels"])
    return StepOutput(loss, {"nlvr2_loss": loss.detach(), "nlvr2_acc": acc})


def beit3_classify_objective(model: Beit3, batch: Batch, task) -> StepOutput:
    logits = pair_logits(model, "classify", batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    loss, acc = classification_loss(logits, batch["labels"])
    return StepOutput(loss, {"cls_loss": loss.detach(), "cls_acc": acc})


def beit3_retrieval_objective(model: Beit3, batch: Batch, task) -> StepOutput:
    pad = batch["attention_mask"] == 0
    img, _ = model.retrieval_embeddings(image=batch["pixel_values"])
    _, txt = model.retrieval_embeddings(text_ids=batch["input_ids"], padding_mask=pad)
    itc = contrastive_loss(img, txt, logit_scale(model), task.gather_with_grad)
    return StepOutput(itc.loss, {"irtr_loss": itc.loss.detach(), "itc_i2t_acc": itc.accuracy_i2t,
                                 "itc_t2i_acc": itc.accuracy_t2i, "logit_scale": itc.scale.detach()})


# ---------------------------------------------------------------------- forward FLOPs
# ``f`` = :func:`vlmo_cli.model.flops.path_flops` of the BEiT-3 model at the text length the step runs at
def pair_flops(f: dict[str, int], task) -> float:
    """VQA, classification: one pass over the pair."""
    return f["pair (image first, then text)"]


def nlvr2_flops(f: dict[str, int], task) -> float:
    """NLVR2: one pass per (image, text) pair."""
    return 2 * f["pair (image first, then text)"]


def dual_flops(f: dict[str, int], task) -> float:
    """Retrieval: the image and the text pass."""
    return f["image (dual encoder)"] + f["text (dual encoder)"]


# ---------------------------------------------------------------------- masked data modelling
def beit3_mdm_trainable(name: str, cfg: Beit3Config, task) -> bool:
    """Everything the parts in use reach, so that no trained parameter goes without a gradient (DDP requires it):
    the vision copy (``A``) of every multiway module when images or pairs are drawn, the language copy (``B``) when
    texts or pairs are; the mask token and the ``mim`` head only when some image is masked. When no image patch is
    predicted (whole pairs alone), the image tokens' outputs of the last block are read by no loss, so what only
    shapes them stays frozen: that block's vision query, attention output and FFN, and the final vision LayerNorm
    (the image keys and values still serve the text)."""
    fr = task.fractions
    images = fr["image"] > 0 or fr["pair"] > 0
    texts = fr["text"] > 0 or fr["pair"] > 0
    masked_images = fr["image"] > 0 or (fr["pair"] > 0 and task.pair_image_mask_ratio > 0)
    if name.startswith(("vision_embed.mask_token", "mim_head.")):
        return masked_images
    if not masked_images and name.startswith((*_image_output_only(cfg.depth), "encoder.layer_norm.A.")):
        return False
    if name.startswith(("vision_embed.", "text_embed.", "mlm_head.")):
        return images if name.startswith("vision_embed.") else texts
    if ".A." in name:
        return images
    if ".B." in name:
        return texts
    return True


def _image_output_only(depth: int) -> tuple[str, ...]:
    last = f"encoder.layers.{depth - 1}."
    return tuple(last + part for part in ("self_attn.q_proj.A.", "self_attn.out_proj.A.", "self_attn.inner_attn_ln.A.",
                                          "ffn.A.", "final_layer_norm.A."))


def beit3_mdm_flops(f: dict[str, int], task) -> float:
    """The mix of one sample: an image pass, a text pass and the MLM head, or a pair pass and the MLM head, weighted
    by the fractions."""
    fr = task.fractions
    mlm = f["MLM head (per text)"]
    return (fr["image"] * f["image (dual encoder)"] + fr["text"] * (f["text (dual encoder)"] + mlm)
            + fr["pair"] * (f["pair (image first, then text)"] + mlm))


def _task(name: str, head: str, objective, forward_flops) -> StageDef:
    base = STAGE_DEFS[name]
    return StageDef(name, base.data_task, (head,), objective, everything, forward_flops,
                    uses_contrastive=base.uses_contrastive)


#: the BEiT-3 tasks, under the recipe sections of the VLMo ones (THE list of :data:`vlmo_cli.config.schema.STAGES`)
BEIT3_STAGE_DEFS: dict[str, StageDef] = {
    s.name: s
    for s in (
        _task("finetune.vqa", "vqa", beit3_vqa_objective, pair_flops),
        _task("finetune.nlvr2", "nlvr2", beit3_nlvr2_objective, nlvr2_flops),
        _task("finetune.retrieval_coco", "retrieval", beit3_retrieval_objective, dual_flops),
        _task("finetune.retrieval_flickr", "retrieval", beit3_retrieval_objective, dual_flops),
        _task("finetune.classify", "pair_classify", beit3_classify_objective, pair_flops),
        StageDef("pretrain.mdm", "mixed", ("mlm", "mim"), mdm_objective, beit3_mdm_trainable, beit3_mdm_flops,
                 loader=mdm.stage_loader, validate=mdm_validate, equal_rows=False),
    )
}


def beit3_stage_config(stage, stage_def: StageDef, open_dataset) -> Beit3Config:
    """The :class:`Beit3Config` a resolved recipe ``stage`` trains: the recipe's size and overrides at the data's
    image size, the task's head, the VQA answer / class count of the prepared data, unilm's initialisation of a
    fine-tuning model, and no final LayerNorm for VQA (as ``beit3_*_vqav2``). Pre-training (``pretrain.mdm``) keeps
    torchscale's initialisation of the ``BEiT3`` module; its ``mim`` head predicts pixels, a teacher's features or a
    visual tokenizer's ids."""
    task, data = stage.task, stage.data
    pretrain = stage_def.name == "pretrain.mdm"
    changes: dict = {"heads": list(stage_def.heads), "init": "torchscale" if pretrain else "unilm",
                     "image_size": data.image_size}
    if pretrain:
        patch_size = stage.model.build_config(image_size=data.image_size).patch_size
        changes["mim_target_dim"] = mdm.mim_target_dim(task, data.image_size, patch_size)
    if stage_def.data_task == "vqa":
        changes["normalize_output"] = False
        num_answers = getattr(task, "num_answers", 0) or None
        if num_answers is None and (dataset := open_dataset()) is not None:
            num_answers = len(dataset.answers)
        if num_answers:
            changes["vqa_num_answers"] = num_answers
    if stage_def.data_task == "classify" and (dataset := open_dataset()) is not None:
        changes["num_classes"] = len(dataset.label_names)
    return stage.model.build_config(**changes)
