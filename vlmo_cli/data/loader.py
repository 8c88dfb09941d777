"""Loaders: ``torch`` datasets over prepared directories, a resumable sharded sampler and :func:`build_dataloader`.

Prepared splits are memory-mapped Arrow (``datasets.load_from_disk``); images are decoded in the DataLoader workers.
An image that fails to decode at read time becomes ``None``, is dropped by the collator and counted in the batch's
``num_skipped`` (and in the dataset's ``skipped`` counter in-process) - never a crash mid-run.

Order is a pure function of ``(seed, epoch)``: :class:`ResumableSampler` draws one permutation per epoch, shards it
``rank::world_size`` like ``DistributedSampler`` and can start after the first ``skip_batches`` batches, so a resumed
run sees exactly the batches the interrupted one would have seen. Augmentation and masking randomness comes from the
torch generator of each worker, which the DataLoader seeds from ``seed``, ``epoch`` and the worker id.

Items per task (what :class:`~vlmo_cli.data.collate.Collator` receives):

- ``pairs``: one item per (image, caption) pair -> ``pixel_values``, ``text``, ``image_index`` (row of the image).
- ``text``: ``text`` (a text dataset, or every caption of a pairs dataset).
- ``images``: ``pixel_values``, ``image_index`` (an images or pairs dataset).
- ``vqa``: ``pixel_values``, ``text`` (question), ``labels``, ``scores``, ``question_id``, ``image_index``.
- ``nlvr2``: ``pixel_values``, ``pixel_values_1``, ``text`` (sentence), ``label``.
- ``classify``: one item per labelled (image, caption) -> ``pixel_values``, ``text``, ``label``.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from ..errors import DataError
from .collate import TASKS, CollateConfig, Collator
from .images import decode_rgb
from .shards import names_shards
from .store import PreparedDataset, open_prepared
from .streaming import StreamOptions, build_stream_loader
from .tokenizer import TextTokenizer, load_tokenizer
from .transforms import build_transform

log = logging.getLogger(__name__)

#: task -> prepared kinds it can read
TASK_KINDS = {
    "pairs": ("pairs",),
    "text": ("text", "pairs"),
    "images": ("images", "pairs"),
    "vqa": ("vqa",),
    "nlvr2": ("nlvr2",),
    "classify": ("pairs",),
}


class _Images:
    """Safe decoding + transform; counts and logs images that cannot be decoded."""

    transform: Callable | None
    skipped: int = 0

    def _pixels(self, data: dict[str, Any] | None, where: str) -> torch.Tensor | None:
        try:
            if data is None or data.get("bytes") is None:
                raise ValueError("no image bytes")
            image = decode_rgb(data["bytes"])
        except Exception as exc:  # corrupt bytes: skip, count, carry on
            self.skipped += 1
            if self.skipped <= 5:
                log.warning("skipping unreadable image %s: %s", where, exc)
            return None
        return self.transform(image) if self.transform is not None else image


def group_indices(ds) -> np.ndarray:
    """Per row, an integer in ``[0, rows)`` for its ``group`` string: equal strings, equal integers; a row without a
    group (null) is a group of its own."""
    import pyarrow.compute as pc

    column = ds.data.column("group")
    codes = pc.dictionary_encode(column).combine_chunks().indices.to_numpy(zero_copy_only=False)
    codes = np.asarray(codes, dtype=np.float64)  # nulls arrive as NaN
    missing = np.isnan(codes)
    out = np.where(missing, 0, codes).astype(np.int64)
    distinct = int(out[~missing].max()) + 1 if (~missing).any() else 0
    out[missing] = distinct + np.arange(int(missing.sum()))
    return out


def _caption_offsets(ds) -> np.ndarray:
    """Cumulative caption counts per row (``offsets[r]`` = first flat index of row ``r``), computed in Arrow."""
    import pyarrow.compute as pc

    column = ds.data.column("captions")
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.concatenate([[0], np.cumsum(lengths)])


class PairsDataset(Dataset, _Images):
    """Image-caption pairs from a ``pairs`` dataset: one item per caption (``per_image=False``) or per image."""

    def __init__(self, prepared: PreparedDataset, split: str, transform: Callable | None, *, per_image: bool = False,
                 with_label: bool = False) -> None:
        self.ds = prepared.split(split)
        self.transform = transform
        self.per_image = per_image
        self.with_label = with_label
        if with_label and "label" not in self.ds.column_names:
            raise DataError(f"{prepared.root}: task 'classify' needs a 'label' column (prepare pairs with --label-col)")
        self.offsets = _caption_offsets(self.ds)
        self.groups = group_indices(self.ds) if "group" in self.ds.column_names else None

    def __len__(self) -> int:
        return len(self.ds) if self.per_image else int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Flat caption index -> (row, caption number)."""
        row = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return row, index - int(self.offsets[row])

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        row, cap = (index, 0) if self.per_image else self.locate(index)
        item = self.ds[row]
        pixels = self._pixels(item["image"], f"{item['image_id']} (row {row})")
        if pixels is None:
            return None
        out = {"pixel_values": pixels, "text": item["captions"][cap], "image_index": row}
        if self.groups is not None:
            out["group_index"] = int(self.groups[row])
        if self.with_label:
            out["label"] = int(item["label"])
        return out


class CaptionsDataset(Dataset):
    """Texts of a ``text`` dataset, or every caption of a ``pairs`` dataset (with the row of its image)."""

    def __init__(self, prepared: PreparedDataset, split: str) -> None:
        self.ds = prepared.split(split)
        self.captions = prepared.kind == "pairs"
        self.offsets = _caption_offsets(self.ds) if self.captions else None
        if self.captions:
            self.ds = self.ds.select_columns(["captions"])

    def __len__(self) -> int:
        return int(self.offsets[-1]) if self.captions else len(self.ds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not self.captions:
            return {"text": self.ds[index]["text"]}
        row = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return {"text": self.ds[row]["captions"][index - int(self.offsets[row])], "image_index": row}


class ImagesDataset(Dataset, _Images):
    """Images of an ``images`` or ``pairs`` dataset, one item per row."""

    def __init__(self, prepared: PreparedDataset, split: str, transform: Callable | None) -> None:
        self.ds = prepared.split(split).select_columns(["image", "image_id"])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self.ds[index]
        pixels = self._pixels(item["image"], f"{item['image_id']} (row {index})")
        return None if pixels is None else {"pixel_values": pixels, "image_index": index}


class VqaDataset(Dataset, _Images):
    """VQA questions; the image comes from the split's image table (``image_index`` = its table row)."""

    def __init__(self, prepared: PreparedDataset, split: str, transform: Callable | None) -> None:
        self.ds = prepared.split(split)
        self.images = prepared.image_table(split)
        self.transform = transform
        parts = [p for p in split.split("+") if p]
        offsets = prepared.image_row_offsets(split)
        sizes = [prepared.manifest["splits"][p] for p in parts]
        self.row_offset = np.repeat(np.asarray(offsets, dtype=np.int64), sizes)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self.ds[index]
        image_row = int(item["image_row"]) + int(self.row_offset[index])
        pixels = self._pixels(self.images[image_row]["image"], f"image {item['image_id']}")
        if pixels is None:
            return None
        return {"pixel_values": pixels, "text": item["question"], "labels": item["labels"], "scores": item["scores"],
                "question_id": int(item["question_id"]), "image_index": image_row}


class Nlvr2Dataset(Dataset, _Images):
    """NLVR2 statements with their two images."""

    def __init__(self, prepared: PreparedDataset, split: str, transform: Callable | None) -> None:
        self.ds = prepared.split(split)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self.ds[index]
        left = self._pixels(item["image_0"], f"{item['identifier']} image_0")
        right = self._pixels(item["image_1"], f"{item['identifier']} image_1") if left is not None else None
        if left is None or right is None:
            return None
        return {"pixel_values": left, "pixel_values_1": right, "text": item["sentence"], "label": int(item["label"])}


class ResumableSampler(Sampler[int]):
    """Deterministic, shardable, resumable index order.

    Args:
        size: dataset length.
        shuffle: permute per epoch (``torch.randperm`` seeded with ``seed + epoch``), else keep order.
        seed: base seed.
        rank / world_size: this process takes ``order[rank::world_size]`` (the order is padded by wrapping, as
            ``DistributedSampler`` does, so every rank gets the same count).
        drop_last: with ``batch_size``, drop the incomplete last batch of this rank.
        batch_size: only used for ``drop_last`` and ``skip_batches``.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 batch_size: int = 1, drop_last: bool = False) -> None:
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} must lie in [0, world_size={world_size})")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.batch_size, self.drop_last = batch_size, drop_last
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch's permutation and resume after its first ``skip_batches`` batches."""
        self.epoch, self.skip_batches = epoch, skip_batches

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        per_rank = -(-self.size // self.world_size) if self.size else 0
        total = per_rank * self.world_size
        if total > len(order) and order:
            order += (order * (total // len(order) + 1))[: total - len(order)]
        mine = order[self.rank:total:self.world_size]
        if self.drop_last:
            mine = mine[: len(mine) // self.batch_size * self.batch_size]
        return mine[self.skip_batches * self.batch_size:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return len(self.indices())


def resolve_tokenizer(tokenizer: TextTokenizer | str | Path | None, prepared: PreparedDataset | None
                      ) -> TextTokenizer | None:
    """A tokenizer object from an object, a path, or the one stored in the prepared directory."""
    if isinstance(tokenizer, TextTokenizer):
        return tokenizer
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    if prepared is not None and prepared.tokenizer_path is not None:
        return load_tokenizer(prepared.tokenizer_path)
    return None


def _flip_default(task: str, prepared: PreparedDataset | None) -> bool:
    if prepared is not None and "flip_ok" in prepared.manifest:
        return bool(prepared.manifest["flip_ok"])
    return task not in ("vqa", "nlvr2")


def _seed_worker(worker_id: int) -> None:
    from ..stop_signals import ignore_stop_signals

    ignore_stop_signals()  # Ctrl-C reaches the workers too: the training process stops them after its checkpoint
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_dataset(path: str | Path, split: str, task: str, *, image_size: int = 224, train: bool = True,
                  randaug: bool = True, hflip: bool | None = None, per_image: bool = False) -> Dataset:
    """The torch dataset of ``task`` over split ``split`` of a prepared directory (see the module docstring)."""
    if task not in TASK_KINDS:
        raise DataError(f"unknown task {task!r}; allowed: {list(TASK_KINDS)}")
    prepared = open_prepared(path, TASK_KINDS[task])
    flip = _flip_default(task, prepared) if hflip is None else hflip
    transform = build_transform(image_size, train, randaug=randaug, hflip=flip) if TASKS[task][0] else None
    if task in ("pairs", "classify"):
        return PairsDataset(prepared, split, transform, per_image=per_image, with_label=task == "classify")
    if task == "text":
        return CaptionsDataset(prepared, split)
    if task == "images":
        return ImagesDataset(prepared, split, transform)
    if task == "vqa":
        return VqaDataset(prepared, split, transform)
    return Nlvr2Dataset(prepared, split, transform)


def _num_images(dataset: Dataset) -> int:
    """Rows (images) behind a dataset: ``image_index`` values lie in ``[0, this)``."""
    ds = getattr(dataset, "ds", None)
    return len(ds) if ds is not None else len(dataset)


class _OffsetImages(Dataset):
    """A dataset whose ``image_index`` (and ``group_index``, which lies in the same ``[0, rows)`` range) values are
    shifted, so that concatenated corpora never share an image or group id."""

    def __init__(self, dataset: Dataset, offset: int) -> None:
        self.dataset, self.offset = dataset, offset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self.dataset[index]
        if item is not None and "image_index" in item:
            item = {**item, "image_index": item["image_index"] + self.offset}
            if "group_index" in item:
                item["group_index"] = item["group_index"] + self.offset
        return item


def build_dataloader(path: str | Path | list, split: str, task: str, *, tokenizer: TextTokenizer | str | Path | None = None,
                     image_size: int = 224, batch_size: int = 32, train: bool = True, seed: int = 0,
                     workers: int = 0, rank: int = 0, world_size: int = 1, epoch: int = 0, skip_batches: int = 0,
                     max_text_len: int = 40, padding: str = "max_length", mlm: bool = False,
                     mlm_probability: float = 0.15, mlm_budget: str = "padded", mim: bool = False,
                     patch_size: int = 16, mim_ratio: float = 0.4, randaug: bool = True, hflip: bool | None = None,
                     drop_last: bool | None = None, shuffle: bool | None = None, streaming: bool = False,
                     pin_memory: bool = False, stream: StreamOptions | None = None,
                     stream_resume: dict | None = None) -> DataLoader:
    """A DataLoader yielding collated batches (keys: :mod:`vlmo_cli.data.collate`).

    Args:
        path: prepared directory, or a list of them (concatenated; the first one's tokenizer and answers are used),
            or webdataset shards (entries ending in ``.tar`` or URLs: :mod:`vlmo_cli.data.streaming`;
            ``streaming=True`` also reads a folder of ``*.tar``).
        split: split name; ``"a+b"`` concatenates splits.
        task: one of ``pairs``, ``text``, ``images``, ``vqa``, ``nlvr2``, ``classify``.
        tokenizer: object or path; default: the prepared directory's ``tokenizer/``.
        image_size: model input side.
        batch_size: per-process batch size.
        train: training transforms, shuffling and ``drop_last`` (each overridable); else eval transforms, in order.
        seed / epoch / skip_batches: the order is a function of ``(seed, epoch)``; ``skip_batches`` resumes
            mid-epoch. Change the epoch later with ``loader.sampler.set_epoch(epoch, skip_batches)``.
        workers: DataLoader worker processes.
        rank / world_size: shard the data over processes.
        max_text_len / padding / mlm* / mim* / patch_size: collation (:class:`~vlmo_cli.data.collate.CollateConfig`).
        randaug / hflip: train augmentation; ``hflip=None`` follows the manifest's ``flip_ok`` (off for vqa/nlvr2).
        stream / stream_resume: shard-stream options and this process's saved stream positions (shards only).
    """
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; allowed: {list(TASKS)}")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if workers > 0:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    shuffle = train if shuffle is None else shuffle
    drop_last = train if drop_last is None else drop_last
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        raise DataError("no dataset directory given")
    path = paths[0]
    if streaming and len(paths) == 1 and Path(path).is_dir():
        paths = [str(p) for p in sorted(Path(path).glob("*.tar"))] or [f"{path}/*.tar"]
    streaming = streaming or names_shards(paths)
    prepared = None if streaming else open_prepared(path, TASK_KINDS.get(task))
    tok = resolve_tokenizer(tokenizer, prepared)
    config = CollateConfig(max_text_len=max_text_len, padding=padding, mlm=mlm, mlm_probability=mlm_probability,
                           mlm_budget=mlm_budget, mim=mim, mim_ratio=mim_ratio, grid=image_size // patch_size,
                           num_answers=len(prepared.answers) if task == "vqa" and prepared else None)
    collate = Collator(task, tok, config)
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    common = dict(batch_size=batch_size, num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
                  worker_init_fn=_seed_worker, generator=generator, persistent_workers=False)
    if streaming:  # webdataset shards: batches are made (and collated) inside the stream
        transform = build_transform(image_size, train, randaug=randaug, hflip=True if hflip is None else hflip)
        return build_stream_loader(paths, task, collate, transform if TASKS[task][0] else None,
                                   batch_size=batch_size, options=stream or StreamOptions(), seed=seed, rank=rank,
                                   world_size=world_size, workers=workers, epoch=epoch, skip_batches=skip_batches,
                                   resume=stream_resume, shuffle=shuffle, pin_memory=pin_memory,
                                   worker_init_fn=_seed_worker)
    datasets = [build_dataset(p, split, task, image_size=image_size, train=train, randaug=randaug, hflip=hflip)
                for p in paths]
    if len(datasets) > 1:  # several corpora: one index space, and image ids that stay distinct across corpora
        offsets = np.cumsum([0] + [_num_images(d) for d in datasets[:-1]])
        datasets = [_OffsetImages(d, int(o)) for d, o in zip(datasets, offsets)]
    dataset = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
    if drop_last and _too_small(len(dataset), batch_size, world_size, task, f"{path} ({split})"):
        drop_last = False  # one smaller batch per epoch rather than none at all
    sampler = ResumableSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                               batch_size=batch_size, drop_last=drop_last)
    sampler.set_epoch(epoch, skip_batches)
    return DataLoader(dataset, sampler=sampler, **common)


#: the fewest rows a batch of a task can train on: ITC/ITM need another pair to contrast with
MIN_BATCH = {"pairs": 2}


def _too_small(size: int, batch_size: int, world_size: int, task: str, name: str) -> bool:
    """Whether each process holds fewer rows than one batch (then training keeps the smaller batch); a
    :class:`DataError` when that batch is too small for the task's objective."""
    per_rank = -(-size // world_size)
    if per_rank >= batch_size:
        return False
    if per_rank < MIN_BATCH.get(task, 1):
        where = f" over {world_size} processes" if world_size > 1 else ""
        raise DataError(f"{name} has {size} samples{where}, fewer than the batch of {batch_size}; lower "
                        f"data.batch_size (a {task!r} batch needs at least {MIN_BATCH.get(task, 1)} per process)")
    return True


@dataclass
class RetrievalEval:
    """What image-text retrieval evaluation needs.

    Attributes:
        images: batches of ``pixel_values`` + ``image_ids`` (row index of each image), in row order.
        texts: batches of ``input_ids`` + ``attention_mask`` + ``image_ids`` (the image each caption describes),
            shortest captions first (so that each batch can drop the padding its captions share).
        text_to_image: ``[num_captions]`` int64, the image row of every caption (multi-caption ground truth).
        image_names: ``image_id`` strings of the rows.
        text_order: ``[num_captions]`` int64, the caption index of each row ``texts`` yields, in that order.
    """

    images: DataLoader
    texts: DataLoader
    text_to_image: torch.Tensor
    image_names: list[str]
    text_order: torch.Tensor


def build_retrieval_eval(path: str | Path, split: str = "test", *, tokenizer: TextTokenizer | str | Path | None = None,
                         image_size: int = 224, batch_size: int = 64, workers: int = 0, max_text_len: int = 40
                         ) -> RetrievalEval:
    """Image and caption loaders (eval transforms, fixed order) over a ``pairs`` split for retrieval metrics."""
    prepared = open_prepared(path, "pairs")
    tok = resolve_tokenizer(tokenizer, prepared)
    if tok is None:
        raise DataError(f"{path}: no tokenizer given and none stored in the prepared directory")
    images = ImagesDataset(prepared, split, build_transform(image_size, False))
    texts = CaptionsDataset(prepared, split)
    offsets = texts.offsets
    text_to_image = torch.from_numpy(np.repeat(np.arange(len(offsets) - 1), np.diff(offsets)).astype(np.int64))
    config = CollateConfig(max_text_len=max_text_len)
    common = dict(batch_size=batch_size, num_workers=workers, shuffle=False)
    order = _by_token_length(texts, tok, max_text_len)
    return RetrievalEval(
        images=DataLoader(images, collate_fn=Collator("images", None, config), **common),
        texts=DataLoader(texts, sampler=order.tolist(), collate_fn=Collator("text", tok, config), **common),
        text_to_image=text_to_image,
        image_names=list(prepared.split(split)["image_id"]),
        text_order=order,
    )


def _by_token_length(texts: CaptionsDataset, tok: TextTokenizer, max_text_len: int, chunk: int = 4096) -> torch.Tensor:
    """Caption indices sorted by token length (stable): batches of similar lengths share most of their padding.

    Tokenising a COCO test split (25,000 captions) once more costs well under a second.
    """
    captions = [c for row in texts.ds["captions"] for c in row] if texts.captions else list(texts.ds["text"])
    lengths = np.concatenate([tok.encode_batch(captions[i:i + chunk], max_text_len)["attention_mask"].sum(1)
                              for i in range(0, len(captions), chunk)]) if captions else np.zeros(0, np.int64)
    return torch.from_numpy(np.argsort(lengths, kind="stable").astype(np.int64))
