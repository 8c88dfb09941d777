"""``pretrain.mdm``: BEiT-3's masked data modelling, on a VLMo or a BEiT-3 model, as a stage of the one training loop.

Every micro-batch mixes images, texts and image-text pairs in the recipe's fractions (:mod:`vlmo_cli.data.mixed`;
each part read by the ordinary prepared-data or shard-stream loader, sharded over the processes, resumed exactly);
the objective is :func:`vlmo_cli.objectives.masked_data.masked_data_loss` over the model's view of its family
(:func:`vlmo_cli.model.family.masked_data_view`). Masking: block-wise patches for images (``image_mask_ratio``), whole
words for texts (``text_mask_ratio``) and for the pairs' texts (``pair_text_mask_ratio``), each text's budget counted
on its real tokens; the pairs' images optionally block-masked too (``pair_image_mask_ratio``).

Data. Each part (``image_dataset``, ``text_dataset``, ``pair_dataset``) names prepared directories or webdataset
shards (:mod:`vlmo_cli.data.streaming`), one kind per part; the parts may differ. An image part reads the images of
images or pairs data, a text part the texts of text data or the captions of pairs data (one sample per caption in
shards, so an image part over pair shards sees an image once per caption). Shards carry no tokenizer: the texts'
tokenizer is ``data.tokenizer``, else the one stored with the first prepared pairs (or text) directory, else the init
model's.

Mixed epochs with streamed parts. A streamed part's pass is its stream's epoch, sized as for the other streaming
stages: with ``data.stream_samples_per_epoch = N`` a mixed epoch holds ``N`` samples over all processes, all parts
together, so each streamed part reads its fraction of them per pass (``N × fraction``: every streamed part's pass is
``N / global micro-batch`` micro-batches); with ``N = 0`` a streamed part's pass is what its shards' counts give. A
mixed epoch is the longest part's pass, prepared or streamed; the parts cycle independently. The checkpoint stores
the stream positions and skip counters of every streamed part, per process and worker stream
(:class:`~vlmo_cli.data.mixed.MixedTracker`); the loop logs the counters summed (``stream_bad_samples`` …) and per part
(``stream_pair_bad_samples`` …). Validation reads the ``val_split`` of prepared parts only; streamed parts are left
out of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..data.collate import trim_text_padding
from ..data.mixed import MixedLoader, batch_sizes, part_stream_state, split_parts
from ..errors import DataError, RecipeError, VlmoError
from ..model.config import ModelConfig
from ..model.family import image_patch_features, masked_data_view
from ..objectives.masked_data import feature_target_loss, masked_data_loss, pixel_target_loss, token_target_loss

#: part → the loader task reading it
PART_TASKS = {"image": "images", "text": "text", "pair": "pairs"}
#: part → offset of its sampler seed (the parts draw independent orders)
_SEED_OFFSETS = {"image": 0, "text": 7919, "pair": 15838}


# ---------------------------------------------------------------------- data
def streamed_parts(task) -> dict[str, bool]:
    """Part in use → whether it names webdataset shards (else prepared directories); a part naming both kinds is
    refused (one message)."""
    from ..data.shards import is_shard_entry

    out = {}
    for kind, paths in task.datasets.items():
        if task.fractions[kind] > 0 and paths:
            flags = {is_shard_entry(p) for p in paths}
            if len(flags) > 1:
                raise DataError(f"pretrain.mdm.{kind}_dataset {list(paths)} mixes webdataset shards with prepared "
                                "directories; each part reads one kind (the parts may differ): list only shards or "
                                "only directories, or write the directories as shards with `vlmo prepare ... "
                                "--out-format webdataset`")
            out[kind] = flags == {True}
    return out


def first_tokenizer_dataset(task) -> str | None:
    """The first prepared directory whose kind has text (pairs, then texts): its tokenizer is the data's."""
    streamed = streamed_parts(task)
    for kind in ("pair", "text"):
        if task.fractions[kind] > 0 and task.datasets[kind] and not streamed[kind]:
            return task.datasets[kind][0]
    return None


def check_parts(stage):
    """Check every part's data before a run builds anything (shards: the source must list existing shards a part
    can read; directories: the first must be prepared data); the first prepared directory (pairs, then texts, then
    images), whose tokenizer is the data's, or ``None`` when every part streams."""
    from ..data.store import open_prepared
    from ..data.streaming import check_stream_source

    task = stage.task
    streamed = streamed_parts(task)
    for kind in (k for k, shards in streamed.items() if shards):
        try:
            check_stream_source(list(task.datasets[kind]), PART_TASKS[kind])
        except DataError as exc:
            raise DataError(f"pretrain.mdm.{kind}_dataset: {exc}") from None
    first = next((task.datasets[k][0] for k in ("pair", "text", "image") if k in streamed and not streamed[k]), None)
    return open_prepared(first) if first is not None else None


def part_sizes(stage, world_size: int) -> dict[str, int]:
    """Rows of each part in one process's micro-batch."""
    return batch_sizes(stage.task.fractions, stage.batch_plan(world_size).micro_batch_size)


def mdm_loader(stage, tokenizer, *, rank: int = 0, world_size: int = 1, epoch: int = 0, skip_batches: int = 0,
               split: str | None = None, train: bool = True, workers: int | None = None, pin_memory: bool = False,
               sizes: dict[str, int] | None = None, stream_state: dict | None = None) -> MixedLoader:
    """The mixed loader of a resolved ``pretrain.mdm`` stage for process ``rank`` of ``world_size``.

    Args:
        stage: the resolved stage.
        tokenizer: a tokenizer object or path; ``None`` = ``data.tokenizer``, else the one stored with the first
            prepared pairs (or texts) directory.
        split: default the task's training split (prepared parts; shards have no splits).
        train: training transforms, shuffling and dropping the last incomplete batch of each part.
        sizes: rows of each part; default: the fractions of this process's micro-batch.
        stream_state: a checkpoint's stream state (every process's; ``TrainerState.stream``): the streamed parts
            continue from its positions.
    """
    from dataclasses import replace

    from ..data.loader import build_dataloader, resolve_tokenizer
    from ..data.store import open_prepared
    from .stream_hooks import stream_options

    task, dcfg = stage.task, stage.data
    streamed = streamed_parts(task)
    sizes = part_sizes(stage, world_size) if sizes is None else sizes
    text_source = first_tokenizer_dataset(task)
    tokenizer = tokenizer if tokenizer is not None else dcfg.tokenizer or None
    tok = resolve_tokenizer(tokenizer, open_prepared(text_source) if text_source else None)
    if tok is None and text_source is not None:
        raise DataError(f"{text_source}: no tokenizer stored with the data; set data.tokenizer")
    if tok is None and (texts := [k for k in ("pair", "text") if k in sizes]):
        raise DataError(f"pretrain.mdm.{texts[0]}_dataset streams webdataset shards, which carry no tokenizer: set "
                        "data.tokenizer (or initialise from a model saved with one)")
    workers = dcfg.num_workers if workers is None else workers
    micro = sum(sizes.values())
    patch_size = stage.model.get("patch_size")
    ratios = {"image": (None, task.image_mask_ratio), "text": (task.text_mask_ratio, None),
              "pair": (task.pair_text_mask_ratio, task.pair_image_mask_ratio or None)}

    def make(kind: str, rows: int):
        mlm_ratio, mim_ratio = ratios[kind]
        # a streamed part's pass: its fraction of a mixed epoch's data.stream_samples_per_epoch (module docstring)
        stream = stream_options(dcfg)
        stream = replace(stream, samples_per_epoch=stream.samples_per_epoch * rows // micro)
        try:
            return build_dataloader(
                list(task.datasets[kind]), split or task.split, PART_TASKS[kind], tokenizer=tok,
                image_size=dcfg.image_size, batch_size=rows, train=train, seed=stage.train.seed + _SEED_OFFSETS[kind],
                workers=workers, rank=rank, world_size=world_size,
                max_text_len=dcfg.max_text_len, mlm=mlm_ratio is not None, mlm_probability=mlm_ratio or 0.15,
                mlm_budget="real", mim=mim_ratio is not None, patch_size=patch_size, mim_ratio=mim_ratio or 0.4,
                randaug=dcfg.randaugment, hflip=dcfg.horizontal_flip, pin_memory=pin_memory, stream=stream)
        except DataError as exc:
            if not streamed[kind]:
                raise
            raise DataError(f"pretrain.mdm.{kind}_dataset: {exc}") from None

    resume = {kind: part_stream_state(stream_state, kind, rank, world_size, workers)
              for kind in sizes if streamed[kind]}
    return MixedLoader({kind: make(kind, rows) for kind, rows in sizes.items()}, epoch, skip_batches, resume)


def stage_loader(stage_data, epoch: int, skip: int, stream_state: dict | None = None) -> MixedLoader:
    """The training loader of the loop's :class:`~vlmo_cli.train.loop.StageData` (this process's share; streamed
    parts at the positions ``stream_state`` saved with the checkpoint)."""
    accelerator = stage_data.accelerator
    return mdm_loader(stage_data.stage, stage_data.tokenizer, rank=accelerator.process_index,
                      world_size=accelerator.num_processes, epoch=epoch, skip_batches=skip,
                      pin_memory=accelerator.device.type == "cuda", stream_state=stream_state)


# ---------------------------------------------------------------------- objective
class MaskedDataObjective:
    """The stage's objective ``(model, batch, task) -> (loss, metrics)``; holds the frozen teacher of
    ``target = "teacher"`` and the frozen visual tokenizer of ``target = "vqkd"`` (each loaded once per directory and
    device, outside the trained model: never saved, never synchronised by DDP)."""

    def __init__(self) -> None:
        self._frozen: dict[tuple[str, str, str], torch.nn.Module] = {}

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], task) -> tuple[torch.Tensor, dict]:
        parts = {name: trim_text_padding(part) for name, part in split_parts(batch).items()}
        if task.target == "teacher":
            patch_loss = feature_target_loss(self.teacher(task.teacher, batch_device(batch)))
        elif task.target == "vqkd":
            patch_loss = token_target_loss(self.visual_tokens(task.visual_tokenizer, batch_device(batch)))
        else:
            patch_loss = pixel_target_loss(model.config.patch_size)
        return masked_data_loss(masked_data_view(model), parts, patch_loss)

    def _load_once(self, load: Callable[[str], torch.nn.Module], path: str, device: torch.device) -> torch.nn.Module:
        """``load(path)`` on ``device``, loaded at the first call only (per loader, directory and device)."""
        key = (load.__name__, str(Path(path).resolve()), str(device))
        if key not in self._frozen:
            self._frozen[key] = load(path).to(device)
        return self._frozen[key]

    def teacher(self, path: str, device: torch.device):
        """``pixel_values -> [B, P, D_teacher]``: the teacher's final patch features of the whole image."""
        model = self._load_once(load_teacher, path, device)
        return lambda pixels: image_patch_features(model, pixels)

    def visual_tokens(self, path: str, device: torch.device):
        """``pixel_values -> [B, P]``: the VQ-KD tokenizer's ids of the whole image, the pipeline's pixels
        (normalised with :data:`~vlmo_cli.data.transforms.MEAN` / ``STD``) mapped to its input range."""
        from ..data.transforms import MEAN, STD
        from ..model.vqkd import tokenizer_input

        model = self._load_once(load_visual_tokenizer, path, device)
        return lambda pixels: model.tokenize(tokenizer_input(pixels, MEAN, STD))


def batch_device(batch: dict[str, torch.Tensor]) -> torch.device:
    return next(v.device for v in batch.values() if isinstance(v, torch.Tensor))


def load_teacher(path: str) -> torch.nn.Module:
    """The frozen teacher of a model directory (or run folder / checkpoint), in eval mode without gradients."""
    from ..factory import load_model

    try:
        teacher = load_model(path)
    except VlmoError as exc:
        raise RecipeError(f"pretrain.mdm.teacher: {exc}") from None
    teacher.eval().requires_grad_(False)
    return teacher


def teacher_dim(task, image_size: int, patch_size: int) -> int:
    """Width of the teacher's patch features, after checking that its patch grid is the student's."""
    from ..factory import load_config
    from ..layout import resolve_model_dir

    try:
        cfg = load_config(resolve_model_dir(task.teacher))
    except VlmoError as exc:
        raise RecipeError(f"pretrain.mdm.teacher: {exc} (a VLMo or BEiT-3 model directory, run folder or checkpoint)"
                          ) from None
    _check_same_grid("teacher", task.teacher, cfg, image_size, patch_size)
    return cfg.embed_dim


def load_visual_tokenizer(path: str):
    """The frozen VQ-KD tokenizer of a tokenizer directory (``vlmo convert vqkd``)."""
    from ..factory import load_vqkd

    try:
        return load_vqkd(path)
    except VlmoError as exc:
        raise RecipeError(f"pretrain.mdm.visual_tokenizer: {exc}") from None


def codebook_size(task, image_size: int, patch_size: int) -> int:
    """Number of visual tokens of the VQ-KD tokenizer (the MIM head's outputs), after checking that it labels the
    student's patch grid: the same resolution (it reads the same pixels) and the same patch size."""
    from ..factory import vqkd_config

    try:
        cfg = vqkd_config(task.visual_tokenizer)
    except VlmoError as exc:
        raise RecipeError(f"pretrain.mdm.visual_tokenizer: {exc}") from None
    _check_same_grid("visual_tokenizer", task.visual_tokenizer, cfg, image_size, patch_size)
    return cfg.codebook_size


def _check_same_grid(key: str, path: str, cfg, image_size: int, patch_size: int) -> None:
    """The frozen model at ``pretrain.mdm.<key>`` reads the student's pixels: it must cut them into the same patches."""
    if cfg.patch_size != patch_size or cfg.image_size != image_size:
        raise RecipeError(f"pretrain.mdm.{key}: {path} reads {cfg.image_size} px images in {cfg.patch_size} px "
                          f"patches; the student sees {image_size} px in {patch_size} px patches: the patch grids "
                          "must be the same (set data.image_size and the model's patch size to its own)")


def mim_target_dim(task, image_size: int, patch_size: int) -> int:
    """Outputs per patch of the MIM head of either family: the teacher's width, the tokenizer's codebook size, or 0
    (the patch's pixels)."""
    if task.target == "teacher":
        return teacher_dim(task, image_size, patch_size)
    if task.target == "vqkd":
        return codebook_size(task, image_size, patch_size)
    return 0


# ---------------------------------------------------------------------- trainable parameters, FLOPs
def mdm_trainable(name: str, cfg: ModelConfig, task) -> bool:
    """Everything the parts in use reach: experts of a modality only when a part routes tokens to them (the image
    experts of the top blocks serve images alone, the VL experts pairs alone), so that no trained parameter goes
    without a gradient (DDP requires it)."""
    fr = task.fractions
    parts = name.split(".")
    if name.startswith("transformer.blocks.") and parts[3].split("_")[-1] in ("text", "imag", "vl"):
        block, kind = int(parts[2]), parts[3].split("_")[-1]
        lower = block < cfg.vlffn_start
        if kind == "vl":
            return fr["pair"] > 0
        alone = fr["image"] if kind == "imag" else fr["text"]
        return alone > 0 or (lower and fr["pair"] > 0)
    images = fr["image"] > 0 or fr["pair"] > 0
    texts = fr["text"] > 0 or fr["pair"] > 0
    if name.startswith(("transformer.patch_embed", "transformer.cls_token", "transformer.pos_embed")):
        return images
    if name.startswith("text_embeddings"):
        return texts
    if name.startswith("mim_head"):
        return fr["image"] > 0 or (fr["pair"] > 0 and task.pair_image_mask_ratio > 0)
    if name.startswith("mlm_score"):
        return texts
    return True


def mdm_flops(f: dict[str, int], task) -> float:
    """The mix of one sample: an image pass, a text pass and the MLM decoder, or a fusion pass and the MLM decoder,
    weighted by the fractions."""
    fr = task.fractions
    return (fr["image"] * f["image (dual encoder)"] + fr["text"] * (f["text (dual encoder)"] + f["MLM head (per text)"])
            + fr["pair"] * (f["pair (fusion encoder)"] + f["MLM head (per text)"]))


# ---------------------------------------------------------------------- validation
#: rows of a validation batch at most (as the other stages' validation), when the mix can be split that way
MAX_VAL_ROWS = 64


def validation_sizes(stage) -> dict[str, int]:
    """Rows of each part in a validation batch: the largest batch of at most :data:`MAX_VAL_ROWS` rows (and at most
    one training micro-batch) that the fractions split into whole rows; else the training micro-batch's split."""
    micro = stage.batch_plan(1).micro_batch_size
    for rows in range(min(micro, MAX_VAL_ROWS), 0, -1):
        try:
            return batch_sizes(stage.task.fractions, rows)
        except DataError:
            continue
    return part_sizes(stage, 1)


@torch.no_grad()
def mdm_validate(module, stage, objective, device, tokenizer, max_batches: int) -> dict[str, float]:
    """Mean of the objective's metrics over up to ``max_batches`` mixed batches of the ``val_split`` of each prepared
    part that has one (eval transforms, fixed order, the training mix of one process; streamed parts are left out);
    empty when none has it."""
    from ..data.store import open_prepared
    from ..objectives.distributed import local_only

    task = stage.task
    streamed = streamed_parts(task)
    sizes = {kind: rows for kind, rows in validation_sizes(stage).items() if not streamed[kind]
             and all(task.val_split in open_prepared(p).splits for p in task.datasets[kind])}
    if not sizes:
        return {}
    model = module.model
    was_training = module.training
    module.eval()
    sums: dict[str, float] = {}
    n = 0
    with local_only(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        loader = mdm_loader(stage, tokenizer, split=task.val_split, train=False, workers=0, sizes=sizes)
        for i, batch in enumerate(loader):
            if i >= max_batches:
                break
            batch = {k: v.to(device) for k, v in batch.items() if k not in ("num_skipped", "num_samples")}
            loss, metrics = objective(model, batch, task)
            for k, v in {"loss": loss, **metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
    module.train(was_training)
    return {f"val_{k}": v / n for k, v in sums.items()} if n else {}
