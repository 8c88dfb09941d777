"""Mixed batches: one micro-batch drawn from several prepared datasets at once, a fixed number of rows from each
(masked data modelling draws images, texts and image-text pairs in every step).

Each part is an ordinary :func:`~vlmo_cli.data.loader.build_dataloader` loader (its own seeded
:class:`~vlmo_cli.data.loader.ResumableSampler`, sharded over the processes, its own collator and masking). A part
that runs out starts its next pass at once, so the parts cycle independently; one *mixed epoch* is the longest part's
pass. The position of every part is a pure function of the mixed position ``(epoch, micro-batches into it)``: micro-
batch ``g = epoch * length + i`` overall is batch ``g % length_k`` of pass ``g // length_k`` of part ``k``. So the
loop's saved ``(epoch, micro_batches_in_epoch)`` resumes every part exactly where it was, as for one dataset.

A mixed batch holds each part's keys prefixed with the part's name and a dot (``image.pixel_values``,
``text.mlm_labels``, ``pair.input_ids`` …; :func:`split_parts` undoes it), plus ``num_skipped`` (all parts) and
``num_samples`` (rows of all parts).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader

from ..errors import DataError


def batch_sizes(fractions: dict[str, float], batch: int) -> dict[str, int]:
    """Rows of each part in a micro-batch of ``batch`` rows: ``fraction × batch``, which must be whole (parts with
    fraction 0 are left out); a :class:`DataError` naming the fractions otherwise."""
    out = {}
    for name, fraction in fractions.items():
        rows = fraction * batch
        if abs(rows - round(rows)) > 1e-6:
            shares = ", ".join(f"{k} {v:g}" for k, v in fractions.items())
            raise DataError(f"a micro-batch of {batch} rows cannot be split as {shares}: each fraction x {batch} must "
                            "be a whole number of rows (change the fractions or data.batch_size)")
        if round(rows) > 0:
            out[name] = int(round(rows))
    if sum(out.values()) != batch:
        raise DataError(f"the parts {out} do not add up to the micro-batch of {batch} rows")
    return out


class MixedPosition:
    """The mixed loader's place in the data, with the interface of :class:`ResumableSampler` the loop uses
    (``set_epoch(epoch, skip_batches)``, ``skip_batches``)."""

    def __init__(self, epoch: int = 0, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches


class MixedLoader:
    """Yields mixed batches (see the module docstring); ``len()`` = micro-batches left in the current mixed epoch.

    Args:
        parts: part name → its training DataLoader (sampler a :class:`ResumableSampler`).
        epoch / skip_batches: where to start.
    """

    dataset = None  # not a shard stream (the loop's streaming hooks look here)

    def __init__(self, parts: dict[str, DataLoader], epoch: int = 0, skip_batches: int = 0) -> None:
        if not parts:
            raise DataError("a mixed loader needs at least one part")
        self.parts = parts
        self.sampler = MixedPosition(epoch, skip_batches)
        self.lengths = {name: self._pass_length(loader) for name, loader in parts.items()}
        empty = [name for name, n in self.lengths.items() if n == 0]
        if empty:
            raise DataError(f"no batch can be drawn from the {', '.join(empty)} data (empty split)")
        self.length = max(self.lengths.values())
        # the collator of a part with text: the loop reads the tokenizer from here
        self.collate_fn = next((p.collate_fn for p in parts.values() if getattr(p.collate_fn, "tokenizer", None)),
                               next(iter(parts.values())).collate_fn)

    @staticmethod
    def _pass_length(loader: DataLoader) -> int:
        sampler = loader.sampler
        epoch, skip = sampler.epoch, sampler.skip_batches
        sampler.set_epoch(epoch, 0)
        n = len(loader)
        sampler.set_epoch(epoch, skip)
        return n

    def __len__(self) -> int:
        return self.length - self.sampler.skip_batches

    def place(self, name: str, step: int) -> tuple[int, int]:
        """``(pass, batches into it)`` of part ``name`` at overall micro-batch ``step``."""
        return divmod(step, self.lengths[name])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        start = self.sampler.epoch * self.length + self.sampler.skip_batches
        passes: dict[str, int] = {}
        iterators = {}
        for name, loader in self.parts.items():
            passes[name], skip = self.place(name, start)
            loader.sampler.set_epoch(passes[name], skip)
            iterators[name] = iter(loader)
        for _ in range(len(self)):
            batch: dict[str, torch.Tensor] = {}
            skipped = torch.zeros((), dtype=torch.int64)
            rows = 0
            for name, loader in self.parts.items():
                try:
                    part = next(iterators[name])
                except StopIteration:  # this part's pass is over: its next one starts now
                    passes[name] += 1
                    loader.sampler.set_epoch(passes[name], 0)
                    iterators[name] = iter(loader)
                    part = next(iterators[name])
                skipped = skipped + part.pop("num_skipped", 0)
                rows += _rows(part)
                batch.update({f"{name}.{k}": v for k, v in part.items()})
            batch["num_skipped"] = skipped
            batch["num_samples"] = torch.tensor(rows, dtype=torch.int64)
            yield batch


def _rows(part: dict[str, torch.Tensor]) -> int:
    return next((v.shape[0] for v in part.values() if isinstance(v, torch.Tensor) and v.ndim > 0), 0)


def split_parts(batch: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A mixed batch's parts: ``{"image": {"pixel_values": …}, "text": {…}, "pair": {…}}`` (parts present only)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in batch.items():
        name, dot, rest = key.partition(".")
        if dot:
            out.setdefault(name, {})[rest] = value
    return out

