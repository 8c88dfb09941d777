"""Stages and tasks as data: which heads the model carries, which parameters train, which batches and objective.

Every ``pretrain-*`` and ``finetune *`` command resolves to one :class:`StageDef` and runs the same loop
(:mod:`vlmo_cli.train.loop`). The objectives follow the official ``compute_*`` functions. :data:`STAGE_DEFS` holds
exactly the ``train`` stages of THE list, :data:`vlmo_cli.config.schema.STAGES` (checked at import).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config.schema import STAGES as SCHEMA_STAGES
from ..errors import DataError
from ..model.config import ModelConfig
from ..model.flops import path_flops
from ..model.vlmo import VLMo
from ..objectives.classification import classification_loss, mim_loss, mlm_loss, vqa_loss, vqa_score
from ..objectives.contrastive import ContrastiveResult, contrastive_loss
from ..objectives.distributed import fetch_pool_rows, gather_local_first, gather_rank_order
from ..objectives.matching import itm_loss, sample_hard_negatives, text_keys
from . import mdm

Batch = dict[str, torch.Tensor]


@dataclass
class StepOutput:
    """Total loss plus the named values to log (losses per objective, accuracies)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


# ---------------------------------------------------------------------- objectives
def mim_objective(model: VLMo, batch: Batch, task) -> StepOutput:
    """Masked-image modelling: masked patches → MIM mask token; regress their normalised pixels."""
    mask = batch["patch_mask"]
    out = model.forward_image(batch["pixel_values"], patch_mask=mask)
    pred = model.mim_head(out.features[:, 1:])
    loss = mim_loss(pred, batch["pixel_values"], mask, model.config.patch_size)
    return StepOutput(loss, {"mim_loss": loss.detach()})


def _masked_lm(model: VLMo, features: torch.Tensor, labels: torch.Tensor, weight: float = 1.0):
    """MLM loss and accuracy with the head applied to the masked positions only: the head is per token and the other
    positions carry label −100, so loss, accuracy and gradients are those of the full ``[B, T, vocab]`` logits, at
    ~15 % of the decoder cost (measured in benchmarks/bench_train.py)."""
    selected = labels != -100
    return mlm_loss(model.mlm_logits(features[selected]), labels[selected], weight)


def text_mlm_objective(model: VLMo, batch: Batch, task) -> StepOutput:
    """Stage 2: text-only MLM through the language experts (weight 1, official ``compute_textonly_mlm``)."""
    out = model.forward_text(batch["mlm_input_ids"], batch["attention_mask"])
    loss, acc = _masked_lm(model, out.features, batch["mlm_labels"])
    return StepOutput(loss, {"mlm_loss": loss.detach(), "mlm_acc": acc})


def negative_exclusions(batch: Batch, gather, same_image: bool, same_text: bool = False,
                        same_group: bool = False) -> dict[str, torch.Tensor]:
    """The hard-negative sampler's optional exclusion keys, gathered in the pool's order: ``image_ids`` (pairs of the
    same image), ``text_keys`` (pairs with the same caption) and ``group_ids`` (pairs of one duplicate group, from the
    data's ``group`` column); only the enabled ones are passed."""
    keys: dict[str, torch.Tensor] = {}
    if same_group and "group_ids" not in batch:
        raise DataError("itm_exclude_same_group needs a duplicate-group key in the data, which this dataset has not: "
                        "prepare it with --group-field (or `vlmo prepare demo`), or turn the option off")
    with torch.no_grad():
        if same_image and "image_ids" in batch:
            keys["image_ids"] = gather(batch["image_ids"])
        if same_text:
            keys["text_keys"] = gather(text_keys(batch["input_ids"], batch["attention_mask"]))
        if same_group:
            keys["group_ids"] = gather(batch["group_ids"])
    return keys


def _itm_rows(batch: Batch, itc: ContrastiveResult, exclude_same_image: bool,
              exclude_same_text: bool = False, exclude_same_group: bool = False) -> tuple[torch.Tensor, ...]:
    """Fusion inputs ``(ids, mask, pixels)`` of ITM: B positives, B (text, hard-negative image), B (hard-negative
    text, image), drawn from the gathered pool (official ``compute_itm_hardneg``)."""
    ids, mask, pixels = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    b = ids.shape[0]
    gather = gather_local_first if itc.local_first else gather_rank_order  # the pool in the logits' column order
    exclusions = negative_exclusions(batch, gather, exclude_same_image, exclude_same_text, exclude_same_group)
    neg = sample_hard_negatives(itc.logits_i2t, itc.logits_t2i, b, positives=itc.labels, **exclusions)
    # only the chosen negatives travel between processes (the official code all-gathers every raw image)
    (neg_pixels,) = fetch_pool_rows([pixels], neg.image_index, itc.local_first)
    neg_ids, neg_mask = fetch_pool_rows([ids, mask], neg.text_index, itc.local_first)
    return torch.cat([ids, ids, neg_ids]), torch.cat([mask, mask, neg_mask]), torch.cat([pixels, neg_pixels, pixels])


def _itm(model: VLMo, batch: Batch, itc: ContrastiveResult, exclude_same_image: bool,
         exclude_same_group: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """ITM with global hard negatives; positive and both negative sets go through ONE batched fusion pass."""
    fused = model.forward_pair(*_itm_rows(batch, itc, exclude_same_image, exclude_same_group=exclude_same_group))
    return itm_loss(model.itm_logits(fused.pooled), batch["input_ids"].shape[0])


def vl_objective(model: VLMo, batch: Batch, task) -> StepOutput:
    """Stage 3: ``itc_weight·ITC + itm_weight·ITM + mlm_weight·MLM`` (official 1, 1, 0.25)."""
    ids, mask, pixels = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    img = model.contrastive_image(pixels, vl_branch=task.itc_vl)
    txt = model.contrastive_text(ids, mask, vl_branch=task.itc_vl)
    max_scale = task.logit_scale_max or None
    plain = contrastive_loss(img.embedding, txt.embedding, model.logit_scale, task.gather_with_grad, max_scale)
    itc = plain.loss
    metrics = {"itc_i2t_acc": plain.accuracy_i2t, "itc_t2i_acc": plain.accuracy_t2i, "logit_scale": plain.scale.detach()}
    if task.itc_vl:
        vl = contrastive_loss(img.vl_embedding, txt.vl_embedding, model.logit_vl_scale, task.gather_with_grad, max_scale)
        itc = 0.5 * (plain.loss + vl.loss)
        metrics["itc_vl_i2t_acc"] = vl.accuracy_i2t
    # one fusion pass for the 3B ITM rows and the B MLM rows (rows are independent: exact, and one big batch
    # runs faster than two; measured in benchmarks/bench_train.py)
    b = ids.shape[0]
    itm_ids, itm_mask, itm_pixels = _itm_rows(batch, plain, task.itm_exclude_same_image,
                                                 getattr(task, "itm_exclude_same_text", False),
                                                 getattr(task, "itm_exclude_same_group", False))
    fused = model.forward_pair(torch.cat([itm_ids, batch["mlm_input_ids"]]), torch.cat([itm_mask, mask]),
                               torch.cat([itm_pixels, pixels]))
    itm, itm_acc = itm_loss(model.itm_logits(fused.pooled[: 3 * b]), b)
    mlm, mlm_acc = _masked_lm(model, fused.text_features[3 * b :], batch["mlm_labels"], task.mlm_weight)
    total = task.itc_weight * itc + task.itm_weight * itm + mlm
    metrics.update(itc_loss=itc.detach(), itm_loss=itm.detach(), itm_acc=itm_acc, mlm_loss=mlm.detach(), mlm_acc=mlm_acc)
    return StepOutput(total, metrics)


def vqa_objective(model: VLMo, batch: Batch, task) -> StepOutput:
    pooled = model.forward_pair(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).pooled
    logits = model.vqa_logits(pooled)
    loss = vqa_loss(logits, batch["vqa_targets"])
    score = vqa_score(logits.detach(), batch["vqa_targets"]) / max(1, logits.shape[0])
    return StepOutput(loss, {"vqa_loss": loss.detach(), "vqa_score": score})


def nlvr2_objective(model: VLMo, batch: Batch, task) -> StepOutput:
    logits = model.nlvr2_logits(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["pixel_values_1"])
    loss, acc = classification_loss(logits, batch["labels"])
    return StepOutput(loss, {"nlvr2_loss": loss.detach(), "nlvr2_acc": acc})


def classify_objective(model: VLMo, batch: Batch, task) -> StepOutput:
    pooled = model.forward_pair(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).pooled
    loss, acc = classification_loss(model.classify_logits(pooled), batch["labels"])
    return StepOutput(loss, {"cls_loss": loss.detach(), "cls_acc": acc})


def retrieval_objective(model: VLMo, batch: Batch, task) -> StepOutput:
    """Dual-encoder ITC (official ``compute_irtr``), plus ITM with hard negatives when ``with_itm``."""
    img = model.encode_image(batch["pixel_values"])
    txt = model.encode_text(batch["input_ids"], batch["attention_mask"])
    itc = contrastive_loss(img, txt, model.logit_scale, task.gather_with_grad)
    metrics = {"irtr_loss": itc.loss.detach(), "itc_i2t_acc": itc.accuracy_i2t, "itc_t2i_acc": itc.accuracy_t2i}
    total = itc.loss
    if task.with_itm:
        itm, acc = _itm(model, batch, itc, exclude_same_image=True,
                        exclude_same_group=getattr(task, "itm_exclude_same_group", False))
        total = total + itm
        metrics.update(itm_loss=itm.detach(), itm_acc=acc)
    return StepOutput(total, metrics)


_MASKED_DATA = mdm.MaskedDataObjective()


def mdm_objective(model: VLMo, batch: Batch, task) -> StepOutput:
    """Masked data modelling (BEiT-3): masked images, texts and pairs of a mixed batch (:mod:`vlmo_cli.train.mdm`)."""
    return StepOutput(*_MASKED_DATA(model, batch, task))


def mdm_validate(module, stage, device, tokenizer, max_batches: int) -> dict[str, float]:
    return mdm.mdm_validate(module, stage, _MASKED_DATA, device, tokenizer, max_batches)


# ---------------------------------------------------------------------- trainable parameters
def _expert_family(name: str) -> tuple[int, str] | None:
    parts = name.split(".")
    if name.startswith("transformer.blocks.") and parts[3].split("_")[-1] in ("text", "imag", "vl"):
        return int(parts[2]), parts[3].split("_")[-1]
    return None


def vision_trainable(name: str, cfg: ModelConfig, task) -> bool:
    """Stage 1: attention, patch embedding, image CLS/positions, vision experts, position table, final norm, MIM head."""
    family = _expert_family(name)
    if family is not None:
        return family[1] == "imag"
    return name.startswith(("transformer.", "relative_position_bias_table", "token_type_embeddings", "mim_head"))


#: the official stage-2 name filter [RUN:153-160]
TEXT_STAGE_TRAINABLE = ("text_embeddings", "token_type_embeddings", "mlp_text", "norm2_text", "mlm_score",
                        "relative_position_bias_table", "transformer.norm")


def text_trainable(name: str, cfg: ModelConfig, task) -> bool:
    """Stage 2 with ``freeze_vision`` (official): only the text side; otherwise everything the text path reaches."""
    if not getattr(task, "freeze_vision", True):
        family = _expert_family(name)
        return family is None or family[1] == "text"
    return any(key in name for key in TEXT_STAGE_TRAINABLE)


def everything(name: str, cfg: ModelConfig, task) -> bool:
    return True


def fusion_trainable(name: str, cfg: ModelConfig, task) -> bool:
    """Fusion tasks never reach the language/vision experts of the VL-FFN blocks: keep those frozen (no grad, no decay)."""
    family = _expert_family(name)
    return family is None or family[1] == "vl" or family[0] < cfg.vlffn_start


def dual_trainable(name: str, cfg: ModelConfig, task) -> bool:
    """Dual-encoder retrieval never uses the VL experts nor the pooler (unless an ITM head trains with it)."""
    if getattr(task, "with_itm", False):
        return True
    family = _expert_family(name)
    return (family is None or family[1] != "vl") and not name.startswith("pooler")


# ---------------------------------------------------------------------- forward FLOPs per sample
# ``f`` = :func:`vlmo_cli.model.flops.path_flops` of the model at the text length the step runs at
def vision_flops(f: dict[str, int], task) -> float:
    """Stage 1: one image pass."""
    return f["image (dual encoder)"]


def text_flops(f: dict[str, int], task) -> float:
    """Stage 2: one text pass and the MLM decoder."""
    return f["text (dual encoder)"] + f["MLM head (per text)"]


def vl_flops(f: dict[str, int], task) -> float:
    """Stage 3: 4 fusion passes (MLM, ITM positive, 2 ITM negatives), both unimodal passes, the MLM decoder, and the
    VL branches of the unimodal passes unless ``itc_vl`` is off."""
    forward = 4 * f["pair (fusion encoder)"] + f["image (dual encoder)"] + f["text (dual encoder)"]
    forward += f["MLM head (per text)"]
    if getattr(task, "itc_vl", True):
        forward += f.get("image VL branch (extra)", 0) + f.get("text VL branch (extra)", 0)
    return forward


def pair_flops(f: dict[str, int], task) -> float:
    """VQA, classification: one fusion pass."""
    return f["pair (fusion encoder)"]


def nlvr2_flops(f: dict[str, int], task) -> float:
    """NLVR2: one fusion pass per image of the pair."""
    return 2 * f["pair (fusion encoder)"]


def retrieval_flops(f: dict[str, int], task) -> float:
    """Dual-encoder retrieval: both unimodal passes, plus 3 fusion passes of ITM when ``with_itm``."""
    itm = 3 * f["pair (fusion encoder)"] if getattr(task, "with_itm", False) else 0
    return f["image (dual encoder)"] + f["text (dual encoder)"] + itm


# ---------------------------------------------------------------------- stage table
@dataclass(frozen=True)
class StageDef:
    """A stage or task.

    Attributes:
        name: recipe section (``pretrain.vl``, ``finetune.vqa`` …).
        data_task: collate task of :mod:`vlmo_cli.data.collate` (``images``, ``text``, ``pairs``, ``vqa`` …).
        heads: heads of the model trained here.
        objective: ``(model, batch, task_settings) -> StepOutput``.
        trainable: ``(param_name, cfg, task_settings) -> bool``; the rest is frozen.
        forward_flops: ``(path_flops, task_settings) -> float``: forward FLOPs of one sample's passes.
        uses_contrastive: the objective contrasts the samples of a micro-batch (its negatives span one micro-batch
            × processes, not the accumulated batch).
        with_vlffn: the model has VL experts (stages 1 and 2 build none, as the official text stage).
        modality_types: rows of the modality embedding when the task needs more than the model's (NLVR2: 3, one
            per image of the pair and one for the text); ``None`` = the model's.
        mlm / mim: the collator adds MLM masking / patch masks.
        loader: builds the training loader from the loop's ``StageData`` (``(data, epoch, skip, stream_state) ->
            loader``); ``None`` = the prepared-data (or shard) loader of ``data_task``.
        validate: ``(module, stage, device, tokenizer, max_batches) -> metrics``; ``None`` = the objective over
            ``data_task`` batches of the validation split.
        equal_rows: every process's micro-batch must hold equally many rows (the gathered contrastive pools); off for
            mixed batches, whose parts never cross processes.
    """

    name: str
    data_task: str
    heads: tuple[str, ...]
    objective: Callable[[VLMo, Batch, object], StepOutput]
    trainable: Callable[[str, ModelConfig, object], bool]
    forward_flops: Callable[[dict[str, int], object], float]
    uses_contrastive: bool = False
    with_vlffn: bool = True
    modality_types: int | None = None
    mlm: bool = False
    mim: bool = False
    loader: Callable | None = None
    validate: Callable | None = None
    equal_rows: bool = True

    def flops_per_sample(self, cfg: ModelConfig, task, text_len: int | float) -> float:
        """Model FLOPs of one training sample: 3 × the forward FLOPs of the passes the objective runs (recomputation
        under activation checkpointing is not counted, by convention)."""
        return 3.0 * self.forward_flops(path_flops(cfg, text_len), task)


_VL_HEADS = ("pooler", "itc", "itc_vl", "itm", "mlm")
STAGE_DEFS: dict[str, StageDef] = {
    s.name: s
    for s in (
        StageDef("pretrain.vision", "images", ("mim",), mim_objective, vision_trainable, vision_flops,
                 with_vlffn=False, mim=True),
        StageDef("pretrain.text", "text", ("pooler", "mlm"), text_mlm_objective, text_trainable, text_flops,
                 with_vlffn=False, mlm=True),
        StageDef("pretrain.vl", "pairs", _VL_HEADS, vl_objective, everything, vl_flops, uses_contrastive=True,
                 mlm=True),
        StageDef("pretrain.mdm", "mixed", ("mlm", "mim"), mdm_objective, mdm.mdm_trainable, mdm.mdm_flops,
                 loader=mdm.stage_loader, validate=mdm_validate, equal_rows=False),
        StageDef("finetune.vqa", "vqa", ("pooler", "vqa"), vqa_objective, fusion_trainable, pair_flops),
        StageDef("finetune.nlvr2", "nlvr2", ("pooler", "nlvr2"), nlvr2_objective, fusion_trainable, nlvr2_flops,
                 modality_types=3),
        StageDef("finetune.retrieval_coco", "pairs", ("pooler", "itc"), retrieval_objective, dual_trainable,
                 retrieval_flops, uses_contrastive=True),
        StageDef("finetune.retrieval_flickr", "pairs", ("pooler", "itc"), retrieval_objective, dual_trainable,
                 retrieval_flops, uses_contrastive=True),
        StageDef("finetune.classify", "classify", ("pooler", "classify"), classify_objective, fusion_trainable,
                 pair_flops),
    )
}


def check_stage_defs() -> None:
    """:data:`STAGE_DEFS` must hold exactly the ``train`` stages of :data:`vlmo_cli.config.schema.STAGES`, in order
    (the one list; a new task without its :class:`StageDef`, or a left-over one, fails here)."""
    wanted = [name for name, spec in SCHEMA_STAGES.items() if spec.kind == "train"]
    if list(STAGE_DEFS) != wanted:
        raise AssertionError(f"train/stages.STAGE_DEFS {list(STAGE_DEFS)} != the train stages of config.schema.STAGES "
                             f"{wanted}")


check_stage_defs()


def init_tokenizer(prepared, init: str) -> str | None:
    """The model directory of ``init`` when the prepared data has no tokenizer of its own and that model was saved
    with one (the tokenizer it was trained with); ``None`` otherwise (an official ``.pt`` file, no init)."""
    from ..errors import CheckpointError
    from ..layout import resolve_model_dir, tokenizer_files

    if (prepared is not None and prepared.tokenizer_path is not None) or not init or not Path(init).is_dir():
        return None
    try:
        model_dir = resolve_model_dir(init)
    except CheckpointError:
        return None  # the init step reports what is wrong with it
    return str(model_dir) if tokenizer_files(model_dir) else None


def stage_model_config(stage_def: StageDef, base: ModelConfig, task, num_answers: int | None = None,
                       num_classes: int | None = None, text_len: int | None = None) -> ModelConfig:
    """The architecture a stage trains: heads, VL experts, modality rows, answer count, text length."""
    heads = list(stage_def.heads)
    if getattr(task, "with_itm", False):
        heads.append("itm")
    changes: dict = {"heads": heads}
    if not stage_def.with_vlffn:
        changes["vlffn_start"] = base.depth
    if stage_def.modality_types:
        changes["num_modality_types"] = stage_def.modality_types
    if num_answers:
        changes["vqa_num_answers"] = num_answers
    if num_classes:
        changes["num_classes"] = num_classes
    if text_len:
        changes["max_text_len"] = text_len
    return base.replace(**changes)


def stage_config(stage, open_dataset: Callable[[], object | None]) -> ModelConfig:
    """The :class:`ModelConfig` of the model a resolved recipe ``stage`` trains.

    The VQA answer count (unless the task sets ``num_answers``) and the class count of ``classify`` come from the
    stage's prepared dataset, which ``open_dataset()`` opens only when one of them is needed; when it returns
    ``None`` (the benchmark, without prepared data) the recipe's ``[model]`` counts stay.
    """
    stage_def, task, data = STAGE_DEFS[stage.name], stage.task, stage.data
    num_answers = num_classes = None
    if stage_def.data_task == "vqa":
        num_answers = getattr(task, "num_answers", 0) or None
        if num_answers is None and (dataset := open_dataset()) is not None:
            num_answers = len(dataset.answers)
    if stage_def.data_task == "classify" and (dataset := open_dataset()) is not None:
        num_classes = len(dataset.label_names)
    base = stage.model.build_config(image_size=data.image_size)
    cfg = stage_model_config(stage_def, base, task, num_answers=num_answers, num_classes=num_classes,
                             text_len=data.max_text_len)
    if not getattr(task, "itc_vl", True):
        cfg = cfg.replace(heads=[h for h in cfg.heads if h != "itc_vl"])
    if stage.name == "pretrain.mdm":
        cfg = cfg.replace(mim_target_dim=mdm.mim_target_dim(task, data.image_size, cfg.patch_size))
    return cfg
