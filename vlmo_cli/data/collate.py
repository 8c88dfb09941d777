"""Batching: turn dataset items into the tensors the model and objectives consume.

A :class:`Collator` is built for one task (see :data:`TASKS`) and called by the DataLoader (so tokenisation and
masking run in the worker processes). Items that failed to load arrive as ``None``; they are dropped and counted in
``num_skipped``.

Batch keys (all tensors; present when the task has them):

=================  ==========================  ===============================================================
key                shape / dtype               meaning
=================  ==========================  ===============================================================
``pixel_values``   ``[B, 3, H, W]`` float      transformed image in [-1, 1] (nlvr2: the left image)
``pixel_values_1`` ``[B, 3, H, W]`` float      nlvr2: the right image
``input_ids``      ``[B, L]`` int64            ``[CLS] text [SEP] [PAD]*`` (L = max_text_len, or longest)
``attention_mask`` ``[B, L]`` int64            1 on real tokens
``mlm_input_ids``  ``[B, L]`` int64            with ``mlm=True``: input ids after whole-word masking
``mlm_labels``     ``[B, L]`` int64            with ``mlm=True``: original id at masked positions, -100 elsewhere
``patch_mask``     ``[B, N]`` bool             with ``mim=True``: BEiT blockwise mask over the N patches
``image_ids``      ``[B]`` int64               index of the image within the split: equal ids = same image
                                               (other captions of one image are positives, not negatives)
``group_ids``      ``[B]`` int64               pairs with a ``group`` column: equal ids = same duplicate group
``vqa_targets``    ``[B, num_answers]`` float  soft scores (0.3/0.6/0.9/1.0) at the answer labels, 0 elsewhere
``question_ids``   ``[B]`` int64               vqa: official question ids (for submission files)
``labels``         ``[B]`` int64               nlvr2 (1 = statement true) and classify: class index
``num_skipped``    ``[]`` int64                items in this batch dropped because their image was unreadable
=================  ==========================  ===============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import DataError
from .masking import BlockMaskGenerator, whole_word_mask
from .tokenizer import TextTokenizer

#: task -> (has images, has text)
TASKS = {
    "pairs": (True, True),  # image-caption pairs: ITC / ITM / MLM pre-training, retrieval fine-tuning
    "text": (False, True),  # text-only MLM (language-expert stage)
    "images": (True, False),  # image-only (vision-expert stage, MIM)
    "vqa": (True, True),
    "nlvr2": (True, True),
    "classify": (True, True),  # labelled pairs
}


@dataclass
class CollateConfig:
    """Args:
    max_text_len: token length (with ``[CLS]``/``[SEP]``); the padded length under ``padding="max_length"``.
    padding: ``"max_length"`` (official, fixed) or ``"longest"`` (dynamic).
    mlm: add ``mlm_input_ids`` / ``mlm_labels``.
    mlm_probability: masking rate.
    mlm_budget: ``"padded"`` (official quirk) or ``"real"`` (see :mod:`vlmo_cli.data.masking`).
    mim: add ``patch_mask``.
    mim_ratio: fraction of masked patches.
    grid: patches per side, required with ``mim``.
    num_answers: VQA vocabulary size, required for task ``vqa``.
    """

    max_text_len: int = 40
    padding: str = "max_length"
    mlm: bool = False
    mlm_probability: float = 0.15
    mlm_budget: str = "padded"
    mim: bool = False
    mim_ratio: float = 0.4
    grid: int | None = None
    num_answers: int | None = None


class Collator:
    """Callable collate function for one task (picklable, so it runs inside DataLoader workers)."""

    def __init__(self, task: str, tokenizer: TextTokenizer | None, config: CollateConfig | None = None) -> None:
        if task not in TASKS:
            raise DataError(f"unknown task {task!r}; allowed: {list(TASKS)}")
        self.task = task
        self.config = config or CollateConfig()
        self.has_image, self.has_text = TASKS[task]
        if self.has_text and tokenizer is None:
            raise DataError(f"task {task!r} needs a tokenizer: prepare the data with --tokenizer, set data.tokenizer, "
                            "or initialise from a model saved with one")
        if self.config.mlm and not self.has_text:
            raise DataError(f"mlm masking needs text; task {task!r} has none")
        if self.config.mim and not self.has_image:
            raise DataError(f"mim masking needs images; task {task!r} has none")
        if self.config.mim and not self.config.grid:
            raise DataError("mim masking needs the patch grid size (image_size // patch_size)")
        if task == "vqa" and not self.config.num_answers:
            raise DataError("task 'vqa' needs num_answers (the size of answers.json)")
        self.tokenizer = tokenizer
        self.block_mask = BlockMaskGenerator(self.config.grid, self.config.mim_ratio) if self.config.mim else None

    def __call__(self, items: list[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
        kept = [item for item in items if item is not None]
        batch: dict[str, torch.Tensor] = {"num_skipped": torch.tensor(len(items) - len(kept), dtype=torch.int64)}
        if self.has_image:
            batch["pixel_values"] = _stack([i["pixel_values"] for i in kept])
            if self.task == "nlvr2":
                batch["pixel_values_1"] = _stack([i["pixel_values_1"] for i in kept])
            if self.block_mask is not None:
                batch["patch_mask"] = self.block_mask.batch(len(kept))
        if kept and "image_index" in kept[0]:
            batch["image_ids"] = torch.tensor([i["image_index"] for i in kept], dtype=torch.int64)
        if kept and "group_index" in kept[0]:
            batch["group_ids"] = torch.tensor([i["group_index"] for i in kept], dtype=torch.int64)
        if self.has_text:
            self._text(batch, [i["text"] for i in kept])
        if self.task == "vqa":
            batch["vqa_targets"] = vqa_targets([i["labels"] for i in kept], [i["scores"] for i in kept],
                                               self.config.num_answers)
            batch["question_ids"] = torch.tensor([i["question_id"] for i in kept], dtype=torch.int64)
        if self.task in ("nlvr2", "classify"):
            batch["labels"] = torch.tensor([i["label"] for i in kept], dtype=torch.int64)
        return batch

    def _text(self, batch: dict[str, torch.Tensor], texts: list[str]) -> None:
        cfg = self.config
        enc = self.tokenizer.encode_batch(texts, cfg.max_text_len, cfg.padding)
        if not texts:
            enc = {k: v.reshape(0, cfg.max_text_len) for k, v in enc.items()}
        ids = torch.from_numpy(enc["input_ids"])
        batch["input_ids"] = ids
        batch["attention_mask"] = torch.from_numpy(enc["attention_mask"])
        if cfg.mlm:
            tok = self.tokenizer
            batch["mlm_input_ids"], batch["mlm_labels"] = whole_word_mask(
                ids, torch.from_numpy(enc["word_ids"]), vocab_size=tok.vocab_size, mask_id=tok.mask_id,
                pad_id=tok.pad_id, special_ids=tok.special_ids, probability=cfg.mlm_probability, budget=cfg.mlm_budget)


#: batch keys with one column per text position (right-padded, see the table above)
TEXT_KEYS = ("input_ids", "attention_mask", "mlm_input_ids", "mlm_labels")


def text_extent(batch: dict[str, torch.Tensor], multiple: int = 4) -> int | None:
    """Columns up to the last real token (or MLM label) of any row, rounded up to ``multiple``; ``None`` without text.

    Rounding keeps the number of distinct shapes small (``torch.compile`` and GPU kernels prefer few, aligned ones).
    Reads one integer back from the device.
    """
    mask = batch.get("attention_mask")
    if mask is None or mask.ndim != 2:
        return None
    used = mask.bool()
    if "mlm_labels" in batch:
        used = used | (batch["mlm_labels"] != -100)
    columns = used.any(0)
    last = int((columns * torch.arange(1, columns.numel() + 1, device=columns.device)).max()) if columns.numel() else 0
    return min(columns.numel(), max(1, -(-last // multiple) * multiple))


def trim_text_padding(batch: dict[str, torch.Tensor], length: int | None = None) -> dict[str, torch.Tensor]:
    """The batch with its text columns cut to ``length`` (default :func:`text_extent`).

    Exact for every output the objectives and evaluations read: padded keys are masked out of attention (their
    softmax weight is exactly 0), text positions are relative to the row start, and columns past the extent carry
    no MLM label; so the real tokens see the same inputs while padding stops costing compute. Shorter captions than
    the padded ``max_text_len`` (official: always 40) make this the largest saving on real data.
    """
    length = text_extent(batch) if length is None else length
    mask = batch.get("attention_mask")
    if length is None or mask is None or length >= mask.shape[1]:
        return batch
    return {k: (v[:, :length] if k in TEXT_KEYS and isinstance(v, torch.Tensor) and v.ndim == 2 else v)
            for k, v in batch.items()}


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(tensors) if tensors else torch.zeros(0, 3, 1, 1)


def vqa_targets(labels: list[list[int]], scores: list[list[float]], num_answers: int) -> torch.Tensor:
    """Dense ``[B, num_answers]`` soft-target matrix from per-question label ids and scores."""
    out = torch.zeros(len(labels), num_answers, dtype=torch.float32)
    for row, (ids, vals) in enumerate(zip(labels, scores)):
        if ids:
            out[row, torch.as_tensor(ids, dtype=torch.int64)] = torch.as_tensor(vals, dtype=torch.float32)
    return out
