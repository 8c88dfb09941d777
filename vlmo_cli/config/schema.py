"""The typed schema of a recipe: one frozen dataclass per section, one per stage or task.

A recipe is a TOML file with shared sections ``[model]``, ``[data]`` and ``[train]`` and one section per stage
(``[pretrain.vl]``, ``[finetune.vqa]``, ``[eval.retrieval]`` ...). The dataclasses here declare every key a recipe
may contain, its type, its default (none = required) and its allowed range, so that :mod:`vlmo_cli.config.recipe` can
validate a file generically and the training loop can read ``stage.train.lr`` with the right type. Nothing here
reads files; loading, overrides and resolution live in :mod:`vlmo_cli.config.recipe`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import MISSING, dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping

from ..errors import ConfigError, RecipeError
from ..model.beit3_config import Beit3Config, beit3_sizes, get_beit3_config
from ..model.config import ModelConfig, get_config, model_sizes
from .fields import REQUIRED, FieldSpec, setting, specs_of


# ---------------------------------------------------------------------------------------------- custom checks
def _check_warmup(value: int | float) -> str | None:
    if isinstance(value, float) and not 0.0 <= value < 1.0:
        return "a float warmup is a fraction of the steps in [0, 1); write an integer (e.g. 2500) for a step count"
    if isinstance(value, int) and value < 0:
        return "an integer warmup is a step count >= 0"
    return None


def _check_betas(value: tuple[float, float]) -> str | None:
    if not all(0.0 <= b < 1.0 for b in value):
        return "each beta must lie in [0, 1)"
    return None


#: experiment trackers Accelerate starts (``train.trackers``) -> the package each needs
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "aim": "aim"}


def _check_trackers(names: tuple[str, ...]) -> str | None:
    unknown = [n for n in names if n not in TRACKER_PACKAGES]
    if unknown:
        return f"unknown tracker(s) {unknown}; allowed: {sorted(TRACKER_PACKAGES)} (or [] for none)"
    if len(set(names)) != len(names):
        return "a tracker is named twice"
    return None


def _check_nonempty_paths(value: tuple[str, ...]) -> str | None:
    if not value or any(not p for p in value):
        return "give at least one non-empty dataset directory"
    return None


# ---------------------------------------------------------------------------------------------- shared sections
#: ModelConfig fields a recipe may override; ``heads`` are decided by the stage, ``name`` by ``size``.
_MODEL_BOUNDS: dict[str, dict[str, float]] = {
    "image_size": dict(ge=1),
    "patch_size": dict(ge=1),
    "embed_dim": dict(ge=1),
    "depth": dict(ge=1),
    "num_heads": dict(ge=1),
    "mlp_ratio": dict(gt=0),
    "vlffn_start": dict(ge=0),
    "layer_scale_init": dict(gt=0),
    "max_text_len": dict(ge=2),
    "max_text_len_of_initckpt": dict(ge=2),
    "vocab_size": dict(ge=1),
    "drop_path_rate": dict(ge=0, lt=1),
    "text_dropout": dict(ge=0, lt=1),
    "num_modality_types": dict(ge=2, le=3),
    "layer_norm_eps": dict(gt=0),
    "vqa_num_answers": dict(ge=1),
    "num_classes": dict(ge=1),
    "pad_token_id": dict(ge=0),
}
_MODEL_NOT_IN_RECIPES = ("heads", "name", "mim_target_dim")
#: model families a recipe may build (``[model] family``): ``vlmo`` (:class:`ModelConfig`) or ``beit3``
#: (:class:`~vlmo_cli.model.beit3_config.Beit3Config`)
FAMILIES = ("vlmo", "beit3")
#: Beit3Config fields a recipe may set (with ``family = "beit3"``) beyond the ones it shares with ModelConfig; the
#: stage decides heads, ``normalize_output`` and the initialisation, a released model ``language``
_BEIT3_RECIPE_ONLY = {
    "ffn_dim": ("BEiT-3 only: hidden width of each expert FFN", dict(ge=1)),
    "max_source_positions": ("BEiT-3 only: rows of the text position table (texts hold 2 fewer tokens)", dict(ge=3)),
}


@functools.cache
def model_specs() -> dict[str, FieldSpec]:
    """Keys of ``[model]``: ``family``, ``size``, ``init``, every overridable :class:`ModelConfig` field and the
    BEiT-3-only fields (:func:`build_family_config` checks which apply to the recipe's family)."""
    out = {
        "family": FieldSpec("family", str, default="vlmo", help="model family: vlmo (VLMo) or beit3 (BEiT-3)",
                            choices=FAMILIES),
        "size": FieldSpec("size", str, REQUIRED, help="named model size",
                          choices=tuple(dict.fromkeys([*model_sizes(), *beit3_sizes()]))),
        "init": FieldSpec(
            "init",
            str,
            default="",
            help='initial weights: "" = random, "beit:PATH", "official:PATH", a model directory or a run checkpoint; '
                 'with family = "beit3": a BEiT-3 model directory or run, or "beit3:PATH" (a released checkpoint)',
        ),
    }
    hints = typing.get_type_hints(ModelConfig)
    doc_args = _model_arg_docs()
    for f in dataclasses.fields(ModelConfig):
        if f.name in _MODEL_NOT_IN_RECIPES:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = FieldSpec(
            f.name, hints[f.name], default=default, help=doc_args.get(f.name, ""), **_MODEL_BOUNDS.get(f.name, {})
        )
    for name, (text, bounds) in _BEIT3_RECIPE_ONLY.items():
        out[name] = FieldSpec(name, int, default=getattr(Beit3Config(), name), help=text, **bounds)
    return out


#: ``[model]`` keys a BEiT-3 recipe may set: the Beit3Config fields shared with ModelConfig and the BEiT-3-only ones
BEIT3_RECIPE_KEYS = ("image_size", "patch_size", "embed_dim", "depth", "num_heads", "vocab_size", "drop_path_rate",
                     "layer_norm_eps", "vqa_num_answers", "num_classes", *_BEIT3_RECIPE_ONLY)


def build_family_config(family: str, size: str, **values: Any) -> ModelConfig | Beit3Config:
    """The config of ``size`` in ``family`` with ``values`` applied; a key the family does not have, or a size it
    does not register, is a :class:`ConfigError` naming what is allowed."""
    if family == "beit3":
        if size not in beit3_sizes():
            raise ConfigError(f"size {size!r} is not a BEiT-3 size; allowed with family = \"beit3\": "
                              f"{', '.join(beit3_sizes())}")
        extra = sorted(k for k in values if k not in BEIT3_RECIPE_KEYS and k not in (
            "heads", "normalize_output", "init", "nlvr2_num_classes", "mim_target_dim"))
        if extra:
            raise ConfigError(f"[model] {', '.join(extra)} do(es) not apply to family = \"beit3\"; its keys: "
                              f"{', '.join(BEIT3_RECIPE_KEYS)}")
        return get_beit3_config(size, **values)
    if size not in model_sizes():
        raise ConfigError(f"size {size!r} is not a VLMo size; allowed: {', '.join(model_sizes())} "
                          "(or set [model] family = \"beit3\")")
    beit3_only = sorted(k for k in values if k in _BEIT3_RECIPE_ONLY)
    if beit3_only:
        raise ConfigError(f"[model] {', '.join(beit3_only)} apply only to family = \"beit3\"")
    return get_config(size, **values)


def _model_arg_docs() -> dict[str, str]:
    """One-line help per ModelConfig field, taken from its ``Args:`` docstring."""
    out: dict[str, str] = {}
    current = None
    for line in (ModelConfig.__doc__ or "").splitlines():
        stripped = line.strip()
        head, sep, rest = stripped.partition(": ")
        if sep and head.isidentifier() and line.startswith(" " * 8) and not line.startswith(" " * 12):
            current = head
            out[current] = rest
        elif current and stripped and line.startswith(" " * 12):
            out[current] += " " + stripped
    return out


@dataclass(frozen=True)
class RecipeModel:
    """The model of a stage: a named size plus overrides, and where its weights come from.

    ``overrides`` holds :class:`ModelConfig` fields that differ from the size (e.g. ``image_size=480``). Heads are not
    part of the recipe: the stage adds them to the config it builds.
    """

    size: str
    init: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    family: str = "vlmo"

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecipeModel):
            return NotImplemented
        return (self.family, self.size, self.init, dict(self.overrides)) == (
            other.family, other.size, other.init, dict(other.overrides))

    def __hash__(self) -> int:
        return hash((self.family, self.size, self.init, tuple(sorted(self.overrides.items()))))

    def build_config(self, **extra: Any) -> ModelConfig | Beit3Config:
        """The config of ``size`` in the recipe's family (:class:`ModelConfig` or
        :class:`~vlmo_cli.model.beit3_config.Beit3Config`) with the recipe's overrides, then ``extra``."""
        return build_family_config(self.family, self.size, **{**self.overrides, **extra})

    def get(self, key: str) -> Any:
        """An architecture value as the stage will see it (override or the size's default)."""
        if key in self.overrides:
            return self.overrides[key]
        return getattr(build_family_config(self.family, self.size), key)


@dataclass(frozen=True, kw_only=True)
class RecipeData:
    """Data settings shared by the stages (a stage section may override any of them)."""

    batch_size: int = setting(help="global batch size per optimizer step (all processes, all micro-batches)", ge=1)
    micro_batch_size: int = setting(
        0, help="samples per process per forward pass; 0 = batch_size / (world size * grad_accum)", ge=0
    )
    num_workers: int = setting(4, help="data-loader worker processes per training process", ge=0)
    max_text_len: int = setting(40, help="text length in tokens (padded/truncated), incl. [CLS] and [SEP]", ge=2)
    tokenizer: str = setting(
        "", help='path to a WordPiece vocab.txt or tokenizer.json; "" = the tokenizer of the init model or dataset'
    )
    image_size: int = setting(0, help="input resolution of the data pipeline; 0 = the model's image_size", ge=0)
    mlm_probability: float = setting(0.15, help="fraction of text tokens masked for MLM", gt=0, lt=1)
    whole_word_masking: bool = setting(True, help="mask whole words (all WordPiece pieces of a word together)")
    mlm_budget_on_real_tokens: bool = setting(
        False, help="count the masking budget on real tokens only (the official code also counts padding)"
    )
    mim_mask_ratio: float = setting(0.4, help="fraction of image patches masked for masked-image modelling", gt=0, lt=1)
    randaugment: bool = setting(True, help="RandAugment(2, 7) in the training transform (official)")
    horizontal_flip: bool = setting(True, help="random horizontal flip in the training transform (official)")
    stream_samples_per_epoch: int = setting(
        0, help="webdataset shards: samples in one epoch; 0 = from the shards' sizes.json/_info.json/*_stats.json", ge=0
    )
    stream_shuffle_buffer: int = setting(
        1000, help="webdataset shards: samples shuffled together (seeded); 0 = stored order", ge=0
    )
    stream_resampled: bool = setting(
        False, help="webdataset shards: draw shards with replacement, endlessly (needs stream_samples_per_epoch)"
    )
    stream_caption_key: str = setting(
        "", help='webdataset shards: JSON field holding the caption; "" = the .txt member, else JSON caption/text'
    )


@dataclass(frozen=True, kw_only=True)
class RecipeTrain:
    """Optimizer, schedule and trainer settings shared by the training stages."""

    lr: float = setting(help="peak learning rate", gt=0)
    weight_decay: float = setting(0.01, help="AdamW weight decay", ge=0)
    betas: tuple[float, float] = setting((0.9, 0.98), help="AdamW betas", check=_check_betas)
    eps: float = setting(1e-8, help="AdamW epsilon", gt=0)
    warmup: int | float = setting(
        0.1, help="linear warmup: a float < 1 is a fraction of the steps, an integer a step count", check=_check_warmup
    )
    max_steps: int = setting(0, help="optimizer steps; 0 = max_epochs * steps per epoch", ge=0)
    max_epochs: int = setting(0, help="epochs, used when max_steps is 0", ge=0)
    schedule: Literal["linear", "cosine"] = setting("linear", help="decay after warmup, down to end_lr")
    end_lr: float = setting(0.0, help="learning rate at the last step", ge=0)
    lr_mult_heads: float = setting(1.0, help="learning-rate multiplier of the task heads (VQA/NLVR2 classifier)", gt=0)
    layer_decay: float = setting(
        1.0, help="layer-wise lr decay: block i trains at lr * layer_decay ** (depth - i), the embeddings at "
        "lr * layer_decay ** (depth + 1), the heads at lr (BEiT-3's --layer_decay); 1 = off", gt=0, le=1
    )
    grad_clip: float = setting(0.0, help="max gradient norm; 0 = no clipping", ge=0)
    grad_accum: int = setting(1, help="micro-batches per optimizer step (must agree with micro_batch_size)", ge=1)
    precision: Literal["no", "bf16", "fp16"] = setting("no", help="mixed precision of the forward pass")
    seed: int = setting(1, help="random seed (official: 1)", ge=0)
    log_every: int = setting(50, help="steps between metric lines", ge=1)
    save_every: int = setting(0, help="steps between checkpoints; 0 = only at the end", ge=0)
    eval_every: int = setting(0, help="steps between validations; 0 = only at the end", ge=0)
    keep_last_n: int = setting(3, help="checkpoints kept on disk; 0 = keep all", ge=0)
    activation_checkpointing: bool = setting(False, help="recompute each block in backward to save memory")
    compile: bool = setting(False, help="torch.compile the model")
    fused_adamw: bool | Literal["auto"] = setting("auto", help='fused AdamW kernel: true, false or "auto" (on GPU)')
    fsdp: bool = setting(
        False, help="shard parameters, gradients and optimizer state over the processes (FSDP2, one unit per MoME block)"
    )
    fsdp_reshard_after_forward: bool = setting(
        True, help="FSDP: free the gathered block weights after forward (ZeRO-3); false keeps them until backward"
    )
    no_decay: Literal["fixed", "compat"] = setting(
        "fixed",
        help='params without weight decay: "fixed" = 1-D params, embeddings and scales;'
        ' "compat" = the official name list',
    )
    trackers: tuple[str, ...] = setting(
        ("tensorboard",), help='experiment trackers through Accelerate: "tensorboard", "wandb", "mlflow", "aim"; [] = none',
        check=_check_trackers,
    )
    report: bool = setting(True, help="write RUN/report.html (curves, recipe, environment) when the run ends")
    output_dir: str = setting("runs", help="folder holding the run folders")
    run_name: str = setting(
        "", help='run folder name (letters, digits, -, _, .); "" = <recipe>-<stage>, e.g. tiny-pretrain-vl'
    )


# ---------------------------------------------------------------------------------------------- stage / task settings
@dataclass(frozen=True, kw_only=True)
class TrainTask:
    """Settings every training stage has: where its data lives."""

    dataset: tuple[str, ...] = setting(
        help="prepared dataset directory, or a list of them (concatenated); or webdataset shards: .tar paths, brace"
        " patterns (/data/{00000..00331}.tar), globs or URLs (https://, file://, s3://, gs://), one or a list",
        check=_check_nonempty_paths
    )
    split: str = setting("train", help='split(s) to train on; several joined by "+" (e.g. "train+restval")')
    val_dataset: str = setting("", help='prepared dataset directory for validation; "" = the first training dataset')
    val_split: str = setting("val", help="split used for validation")


@dataclass(frozen=True, kw_only=True)
class PretrainVisionTask(TrainTask):
    """Stage 1: masked-image modelling on images alone (vision experts, attention, patch embedding)."""


@dataclass(frozen=True, kw_only=True)
class PretrainTextTask(TrainTask):
    """Stage 2: masked language modelling on text alone, starting from the stage-1 (BEiT) weights."""

    freeze_vision: bool = setting(
        True,
        help="train only text embeddings, language experts, MLM head, rel-pos table and final norm (official stage 2)",
    )


@dataclass(frozen=True, kw_only=True)
class PretrainVLTask(TrainTask):
    """Stage 3: image-text contrast, matching with hard negatives and masked language modelling on pairs."""

    mlm_weight: float = setting(0.25, help="weight of the MLM loss (official 0.25)", ge=0)
    itc_weight: float = setting(1.0, help="weight of the image-text contrastive loss", ge=0)
    itm_weight: float = setting(1.0, help="weight of the image-text matching loss", ge=0)
    itc_vl: bool = setting(True, help="also contrast the VL-expert features of the top layers (official)")
    itm_exclude_same_image: bool = setting(
        False, help="never sample another caption of the same image as an ITM hard negative (official: false)"
    )
    itm_exclude_same_text: bool = setting(
        False, help="never sample a pair whose caption equals the positive's (same tokens) as an ITM hard negative, "
                    "text for an image or image for a text (official: false)"
    )
    itm_exclude_same_group: bool = setting(
        False, help="never sample a pair of the positive's duplicate group (the data's 'group' column: "
                    "`prepare --group-field`, the demo's scene) as an ITM hard negative, both ways (official: false)"
    )
    gather_with_grad: bool = setting(
        False, help="let gradients flow through the features gathered from other processes for ITC"
    )
    init_vlffn: Literal["random", "text", "image"] = setting(
        "random", help="initialise the VL experts at random (official) or from the text or image experts"
    )
    logit_scale_max: float = setting(0.0, help="clamp of the contrastive logit scale; 0 = unclamped (official)", ge=0)


#: patch targets of masked data modelling: normalised pixels (as stage 1), a frozen teacher's patch features or the
#: visual-token ids of a frozen BEiT v2 VQ-KD tokenizer
MDM_TARGETS = ("pixels", "teacher", "vqkd")


@dataclass(frozen=True, kw_only=True)
class PretrainMdmTask:
    """Masked data modelling (BEiT-3's one objective): every step mixes masked images, masked texts and masked
    image-text pairs, in the fractions of the batch given here (see :mod:`vlmo_cli.train.mdm`)."""

    image_dataset: tuple[str, ...] = setting(
        (), help="prepared images (or pairs) directory, or a list of them, or webdataset shards of images (or pairs), "
                 "for the masked images; [] = none")
    text_dataset: tuple[str, ...] = setting(
        (), help="prepared text (or pairs: their captions) directory, or a list of them, or webdataset shards of text "
                 "(or pairs), for the masked texts; [] = none")
    pair_dataset: tuple[str, ...] = setting(
        (), help="prepared pairs directory, or a list of them, or webdataset shards of pairs, for the masked "
                 "image-text pairs; [] = none")
    split: str = setting("train", help='split(s) to train on; several joined by "+" (e.g. "train+restval")')
    val_split: str = setting("val", help="split used for validation (datasets without it, and shards, are left out)")
    image_fraction: float = setting(0.25, help="fraction of each batch that is images alone", ge=0, le=1)
    text_fraction: float = setting(0.25, help="fraction of each batch that is texts alone", ge=0, le=1)
    pair_fraction: float = setting(0.5, help="fraction of each batch that is image-text pairs", ge=0, le=1)
    image_mask_ratio: float = setting(0.4, help="fraction of the patches of an image masked (block-wise)", gt=0, lt=1)
    text_mask_ratio: float = setting(0.15, help="fraction of the tokens of a text masked (whole words)", gt=0, lt=1)
    pair_text_mask_ratio: float = setting(0.5, help="fraction of the text tokens of a pair masked", gt=0, lt=1)
    pair_image_mask_ratio: float = setting(
        0.0, help="fraction of the patches of a pair's image masked and predicted too; 0 = the image stays whole",
        ge=0, lt=1)
    target: Literal["pixels", "teacher", "vqkd"] = setting(
        "pixels", help='what a masked patch predicts: "pixels" (its normalised pixels, as stage 1), "teacher" '
                       '(the patch features of the teacher model on the whole image) or "vqkd" (the visual token '
                       "the VQ-KD tokenizer gives it in the whole image, as BEiT v2)")
    teacher: str = setting("", help='model directory of the frozen teacher (target = "teacher")')
    visual_tokenizer: str = setting(
        "", help='tokenizer directory of the frozen VQ-KD visual tokenizer (target = "vqkd"; from `vlmo convert vqkd`)')

    @property
    def fractions(self) -> dict[str, float]:
        """``image`` / ``text`` / ``pair`` → fraction of the batch."""
        return {"image": self.image_fraction, "text": self.text_fraction, "pair": self.pair_fraction}

    @property
    def datasets(self) -> dict[str, tuple[str, ...]]:
        """``image`` / ``text`` / ``pair`` → prepared directories or webdataset shards."""
        return {"image": self.image_dataset, "text": self.text_dataset, "pair": self.pair_dataset}

    @property
    def dataset(self) -> tuple[str, ...]:
        """The directories (or shards) of the kinds in use, pairs first, then texts, then images."""
        return tuple(p for kind in ("pair", "text", "image") if self.fractions[kind] > 0 for p in self.datasets[kind])

    @property
    def val_dataset(self) -> str:
        return ""

    def problems(self) -> list[tuple[str, str]]:
        """``(key, message)`` for every combination of values that is not allowed."""
        out = []
        total = sum(self.fractions.values())
        if abs(total - 1.0) > 1e-6:
            out.append(("pair_fraction", f"image_fraction + text_fraction + pair_fraction = {total:g}; they must sum "
                                         "to 1"))
        for kind, fraction in self.fractions.items():
            if fraction > 0 and not self.datasets[kind]:
                out.append((f"{kind}_dataset", f"missing: {kind}_fraction is {fraction:g}; give a prepared directory "
                                               f"(or set {kind}_fraction = 0)"))
            elif fraction == 0 and self.datasets[kind]:
                out.append((f"{kind}_dataset", f"given, but {kind}_fraction is 0: remove it or give the {kind}s a "
                                               "share of the batch"))
            if any(not p for p in self.datasets[kind]):
                out.append((f"{kind}_dataset", "an empty directory name"))
        if self.target == "teacher" and not self.teacher:
            out.append(("teacher", 'target = "teacher" needs the teacher\'s model directory'))
        if self.target != "teacher" and self.teacher:
            out.append(("teacher", f'given, but target is "{self.target}"; set target = "teacher" to use it'))
        if self.target == "vqkd" and not self.visual_tokenizer:
            out.append(("visual_tokenizer", 'target = "vqkd" needs the VQ-KD tokenizer directory '
                                            "(from `vlmo convert vqkd`)"))
        if self.target != "vqkd" and self.visual_tokenizer:
            out.append(("visual_tokenizer", f'given, but target is "{self.target}"; set target = "vqkd" to use it'))
        if self.target != "pixels" and self.image_fraction == 0 and self.pair_image_mask_ratio == 0:
            out.append(("target", "no patch is predicted (image_fraction and pair_image_mask_ratio are 0)"))
        return out


@dataclass(frozen=True, kw_only=True)
class FinetuneVQATask(TrainTask):
    """VQAv2 fine-tuning: fusion encoder, answer classifier with soft-score BCE."""

    num_answers: int = setting(0, help="answer-vocabulary size; 0 = the prepared dataset's vocabulary", ge=0)


@dataclass(frozen=True, kw_only=True)
class FinetuneNLVR2Task(TrainTask):
    """NLVR2 fine-tuning: two fusion passes (one per image), concatenated pooled features, 2-way classifier."""

    val_split: str = setting("dev", help="split used for validation")


@dataclass(frozen=True, kw_only=True)
class FinetuneRetrievalTask(TrainTask):
    """Image-text retrieval fine-tuning as a dual encoder (ITC), optionally with an ITM head for re-ranking."""

    with_itm: bool = setting(False, help="also train an ITM head (enables eval rerank_k > 0); official: false")
    itm_exclude_same_group: bool = setting(
        False, help="with_itm: never sample a pair of the positive's duplicate group (the data's 'group' column) as "
                    "an ITM hard negative, both ways (official: false)"
    )
    gather_with_grad: bool = setting(
        False, help="let gradients flow through the features gathered from other processes"
    )


@dataclass(frozen=True, kw_only=True)
class FinetuneClassifyTask(TrainTask):
    """Classification of users' own image-text pairs (a labelled ``pairs`` dataset): fusion encoder + a fresh head
    with one output per class name of the prepared dataset."""


@dataclass(frozen=True, kw_only=True)
class EvalTask:
    """Settings every evaluation has: which prepared data and split to score."""

    dataset: str = setting(help="prepared dataset directory to evaluate on")
    split: str = setting("test", help="split to evaluate")


@dataclass(frozen=True, kw_only=True)
class EvalRetrievalTask(EvalTask):
    """Image-text retrieval recall (TR@K / IR@K) with multi-caption image-id matching."""

    rerank_k: int = setting(0, help="re-rank the top k of the dual encoder with the ITM head; 0 = off", ge=0)
    chunk_size: int = setting(1024, help="rows of the similarity matrix computed at once", ge=1)


@dataclass(frozen=True, kw_only=True)
class EvalVQATask(EvalTask):
    """VQA accuracy on a labelled split, or a submission file for an unlabelled one."""

    submission: bool = setting(True, help="write the EvalAI submission JSON (question_id, answer)")
    evaluator: Literal["official", "legacy"] = setting(
        "official", help="VQA accuracy rules: official = GT-Vision-Lab/VQA master (a013f00), legacy = before it"
    )


@dataclass(frozen=True, kw_only=True)
class EvalNLVR2Task(EvalTask):
    """NLVR2 accuracy."""

    split: str = setting("dev", help="split to evaluate (dev or test1)")


@dataclass(frozen=True, kw_only=True)
class EvalClassifyTask(EvalTask):
    """Accuracy, per-class precision/recall and confusion matrix of a ``finetune classify`` model."""

    split: str = setting("val", help="split of the labelled pairs to evaluate")


@dataclass(frozen=True)
class StageSpec:
    """A stage or task a recipe can configure. :data:`STAGES` is THE list of stages and tasks: the commands
    (``vlmo pretrain-*``, ``vlmo finetune TASK``), the ``vlmo bench --stage`` names, the retrieval presets and the
    training table of :mod:`vlmo_cli.train.stages` (checked to hold the same ``train`` names) all follow from it.

    Attributes:
        name: the recipe section (``pretrain.vl``, ``finetune.retrieval_coco`` …).
        kind: ``train`` (a training loop runs it) or ``eval``.
        task: its task-settings dataclass.
        help: one line for people (``vlmo recipes show``).
        command: the name on the command line: ``vlmo pretrain-vl``, ``vlmo finetune vqa``, ``vlmo eval retrieval``.
        preset: for a command with several sections, the ``--dataset`` value choosing this one (``coco``, ``flickr``;
            its test split is ``PRESET-test``); ``""`` otherwise.
        bench: the ``vlmo bench --stage`` name; ``""`` = not benchmarked on its own (a second preset).
        scored_by: the evaluation a trained stage is scored with (its dataset and validation split are the eval
            defaults); ``""`` = none.
        details: the longer help of the command, when it has one of its own.
    """

    name: str
    kind: Literal["train", "eval"]
    task: type
    help: str
    command: str
    preset: str = ""
    bench: str = ""
    scored_by: str = ""
    details: str = ""

    @property
    def group(self) -> str:
        """``pretrain``, ``finetune`` or ``eval``."""
        return self.name.split(".")[0]


STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec("pretrain.vision", "train", PretrainVisionTask, "stage 1: masked-image modelling", "pretrain-vision",
                  bench="vision",
                  details="Stage 1: masked-image modelling on images (attention, patch embedding, vision experts); "
                          "or start from BEiT weights with --from beit:PATH."),
        StageSpec("pretrain.text", "train", PretrainTextTask, "stage 2: text MLM with frozen vision parts",
                  "pretrain-text", bench="text",
                  details="Stage 2: text-only MLM; only text embeddings, language experts, MLM head, position table "
                          "and final norm train."),
        StageSpec("pretrain.vl", "train", PretrainVLTask, "stage 3: ITC + ITM + MLM on image-text pairs",
                  "pretrain-vl", bench="vl", scored_by="retrieval",
                  details="Stage 3: ITC (+VL branch) + ITM with global hard negatives + 0.25·MLM on image-text pairs."),
        StageSpec("pretrain.mdm", "train", PretrainMdmTask, "masked data modelling: masked images, texts and pairs",
                  "pretrain-mdm", bench="mdm",
                  details="BEiT-3's masked data modelling on VLMo or BEiT-3: each step mixes masked images "
                          "(block-wise, predict normalised pixels, a teacher's patch features or VQ-KD visual tokens), "
                          "masked texts and masked image-text pairs (MLM with the image visible), in the recipe's "
                          "fractions of the batch."),
        StageSpec("finetune.vqa", "train", FinetuneVQATask, "VQAv2", "vqa", bench="vqa", scored_by="vqa"),
        StageSpec("finetune.nlvr2", "train", FinetuneNLVR2Task, "NLVR2", "nlvr2", bench="nlvr2", scored_by="nlvr2"),
        StageSpec("finetune.retrieval_coco", "train", FinetuneRetrievalTask, "COCO retrieval", "retrieval",
                  preset="coco", bench="retrieval", scored_by="retrieval"),
        StageSpec("finetune.retrieval_flickr", "train", FinetuneRetrievalTask, "Flickr30k retrieval", "retrieval",
                  preset="flickr", scored_by="retrieval"),
        StageSpec("finetune.classify", "train", FinetuneClassifyTask, "your own labelled image-text pairs", "classify",
                  bench="classify", scored_by="classify"),
        StageSpec("eval.retrieval", "eval", EvalRetrievalTask, "retrieval recall", "retrieval", bench="eval-retrieval"),
        StageSpec("eval.vqa", "eval", EvalVQATask, "VQA accuracy / submission", "vqa"),
        StageSpec("eval.nlvr2", "eval", EvalNLVR2Task, "NLVR2 accuracy", "nlvr2"),
        StageSpec("eval.classify", "eval", EvalClassifyTask, "accuracy of your own classification", "classify"),
    )
}


def stages_of(group: str) -> list[StageSpec]:
    """The stages of one group (``pretrain``, ``finetune``, ``eval``), in :data:`STAGES` order."""
    return [s for s in STAGES.values() if s.group == group]


def finetune_commands() -> dict[str, list[StageSpec]]:
    """``vlmo finetune TASK`` → its sections (several for a task with presets, the first one the default)."""
    out: dict[str, list[StageSpec]] = {}
    for spec in stages_of("finetune"):
        out.setdefault(spec.command, []).append(spec)
    return out


def bench_stages() -> dict[str, str]:
    """``vlmo bench --stage`` name → recipe section."""
    return {s.bench: s.name for s in STAGES.values() if s.bench}


def retrieval_presets() -> dict[str, str]:
    """A retrieval ``--split`` preset (``coco-test``, ``flickr-test``) → the fine-tuning section configuring it."""
    return {f"{s.preset}-test": s.name for s in finetune_commands()["retrieval"]}


#: Top-level tables that group stage sections.
STAGE_GROUPS = ("pretrain", "finetune", "eval")
#: Shared sections in file order.
SHARED_SECTIONS = ("model", "data", "train")


def shared_specs(section: str) -> dict[str, FieldSpec]:
    """The keys of a shared section (``model``, ``data`` or ``train``)."""
    if section == "model":
        return model_specs()
    return specs_of({"data": RecipeData, "train": RecipeTrain}[section])


def stage_sections(stage: str) -> tuple[str, ...]:
    """Shared sections a stage may override: evaluations have no optimizer, so no ``train``."""
    return ("train", "data", "model") if STAGES[stage].kind == "train" else ("data", "model")


# ---------------------------------------------------------------------------------------------- the resolved stage
@dataclass(frozen=True)
class BatchPlan:
    """How the global batch splits over processes and accumulation steps."""

    global_batch_size: int
    micro_batch_size: int
    grad_accum: int
    world_size: int


@dataclass(frozen=True)
class ResolvedStage:
    """Everything one stage needs, with the stage section's values applied over the shared sections.

    Read ``stage.train.lr``, ``stage.data.batch_size``, ``stage.model.build_config()``, ``stage.task.<key>``.
    ``train`` is ``None`` for evaluations. ``data.image_size`` is already the concrete resolution (never 0).
    """

    name: str
    kind: Literal["train", "eval"]
    model: RecipeModel
    data: RecipeData
    train: RecipeTrain | None
    task: Any
    source: str = field(default="<memory>", compare=False)

    def batch_plan(self, world_size: int = 1) -> BatchPlan:
        """Micro-batch size and accumulation steps for ``world_size`` processes (raises :class:`RecipeError`)."""
        batch = self.data.batch_size
        accum_setting = self.train.grad_accum if self.train is not None else 1
        if self.data.micro_batch_size:
            micro = self.data.micro_batch_size
            accum, rest = divmod(batch, micro * world_size)
            if rest or accum < 1:
                raise RecipeError(
                    f"{self.source}: [{self.name}] batch_size {batch} is not a multiple of micro_batch_size {micro}"
                    f" x {world_size} processes"
                )
            if accum_setting != 1 and accum_setting != accum:
                raise RecipeError(
                    f"{self.source}: [{self.name}] grad_accum {accum_setting} disagrees with batch_size {batch} /"
                    f" (micro_batch_size {micro} x {world_size} processes) = {accum}; set one of them"
                )
        else:
            accum = accum_setting
            micro, rest = divmod(batch, world_size * accum)
            if rest or micro < 1:
                raise RecipeError(
                    f"{self.source}: [{self.name}] batch_size {batch} is not divisible by {world_size} processes"
                    f" x grad_accum {accum}"
                )
        return BatchPlan(global_batch_size=batch, micro_batch_size=micro, grad_accum=accum, world_size=world_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict in recipe layout (``model``, ``data``, ``train``, and the stage's own table)."""
        model = {"size": self.model.size, "init": self.model.init, **dict(self.model.overrides)}
        if self.model.family != "vlmo":
            model = {"family": self.model.family, **model}
        out: dict[str, Any] = {"model": model, "data": _plain(self.data)}
        if self.train is not None:
            out["train"] = _plain(self.train)
        group, sub = self.name.split(".")
        out[group] = {sub: _plain(self.task)}
        return out

    def to_toml(self) -> str:
        """A complete recipe that resolves ``self.name`` back to an equal stage (the run folder's recipe.toml)."""
        from .toml import dump_toml

        header = f"# resolved [{self.name}] of {self.source}\n"
        return header + dump_toml(self.to_dict())


def _plain(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}

