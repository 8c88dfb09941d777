"""Mixed batches: one micro-batch drawn from several datasets at once, a fixed number of rows from each (masked data
modelling draws images, texts and image-text pairs in every step).

Each part is an ordinary :func:`~vlmo_cli.data.loader.build_dataloader` loader over prepared directories (its own
seeded :class:`~vlmo_cli.data.loader.ResumableSampler`, sharded over the processes, its own collator and masking) or
over webdataset shards (a :class:`~vlmo_cli.data.streaming.ShardStream`, sharded over processes and workers). A part
that runs out starts its next pass at once, so the parts cycle independently; one *mixed epoch* is the longest part's
pass (a streamed part's pass is its stream's epoch: ``len()`` of the stream). The pass and place of every part are a
pure function of the mixed position ``(epoch, micro-batches into it)``: micro-batch ``g = epoch * length + i``
overall is batch ``g % length_k`` of pass ``g // length_k`` of part ``k``. So the loop's saved ``(epoch,
micro_batches_in_epoch)`` resumes every prepared part exactly where it was, as for one dataset.

A streamed part also needs its stream positions to start mid-pass: the mixed loader notes them (in the part's
:class:`~vlmo_cli.data.streaming.StreamTracker`) as it yields each mixed batch, which the training process consumes one
at a time; :class:`MixedTracker` hands them (and the parts' skip counters) to the loop's checkpoint and metrics as one
stream's, and ``stream_resume`` puts them back. A part restarted mid-pass (a resumed run, or a new mixed epoch while
the part is inside a pass) seeks its streams to the positions noted last.

A mixed batch holds each part's keys prefixed with the part's name and a dot (``image.pixel_values``,
``text.mlm_labels``, ``pair.input_ids`` …, and a streamed part's ``sample_keys``, which :meth:`MixedTracker.note`
takes out; :func:`split_parts` undoes the prefix), plus ``num_skipped`` (all parts) and ``num_samples`` (rows of all
parts).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader

from ..errors import DataError
from .streaming import COUNTERS, ShardStream, resume_positions


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
        parts: part name → its training DataLoader (sampler a :class:`ResumableSampler`, or a shard stream).
        epoch / skip_batches: where to start.
        stream_resume: streamed part name → this process's saved state of it (:func:`part_stream_state`).

    Attributes:
        tracker: the :class:`MixedTracker` of the streamed parts; ``None`` when no part streams.
    """

    dataset = None  # not a shard stream (the loop's streaming hooks look here)

    def __init__(self, parts: dict[str, DataLoader], epoch: int = 0, skip_batches: int = 0,
                 stream_resume: dict[str, dict] | None = None) -> None:
        if not parts:
            raise DataError("a mixed loader needs at least one part")
        self.parts = parts
        self.sampler = MixedPosition(epoch, skip_batches)
        self.streams = {name: p.dataset for name, p in parts.items() if isinstance(p.dataset, ShardStream)}
        for name, saved in (stream_resume or {}).items():
            if saved and name in self.streams:
                self.streams[name].tracker.start_epoch(saved["epoch"], saved.get("positions"), saved.get("carried"))
        self.tracker = MixedTracker(self.streams) if self.streams else None
        self.lengths = {name: self._pass_length(loader) for name, loader in parts.items()}
        empty = [name for name, n in self.lengths.items() if n == 0]
        if empty:
            raise DataError(f"no batch can be drawn from the {', '.join(empty)} data (empty split)")
        self.length = max(self.lengths.values())
        # the collator of a part with text: the loop reads the tokenizer from here
        collators = [_collator(p) for p in parts.values()]
        self.collate_fn = next((c for c in collators if getattr(c, "tokenizer", None)), collators[0])

    @staticmethod
    def _pass_length(loader: DataLoader) -> int:
        if isinstance(loader.dataset, ShardStream):
            return len(loader.dataset)
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
        for name in self.parts:
            passes[name], skip = self.place(name, start)
            iterators[name] = self._start(name, passes[name], skip)
        for _ in range(len(self)):
            batch: dict[str, torch.Tensor] = {}
            skipped = torch.zeros((), dtype=torch.int64)
            rows = 0
            for name in self.parts:
                try:
                    part = next(iterators[name])
                except StopIteration:  # this part's pass is over: its next one starts now
                    passes[name] += 1
                    iterators[name] = self._start(name, passes[name], 0)
                    part = next(iterators[name])
                if name in self.streams:  # handed on now: the stream position after this batch is the part's
                    self.streams[name].tracker.note({"stream_position": part.pop("stream_position")})
                skipped = skipped + part.pop("num_skipped", 0)
                rows += _rows(part)
                batch.update({f"{name}.{k}": v for k, v in part.items()})
            batch["num_skipped"] = skipped
            batch["num_samples"] = torch.tensor(rows, dtype=torch.int64)
            yield batch

    def _start(self, name: str, pass_no: int, skip: int):
        """An iterator over part ``name`` from batch ``skip`` of its pass ``pass_no``."""
        loader = self.parts[name]
        stream = self.streams.get(name)
        if stream is None:
            loader.sampler.set_epoch(pass_no, skip)
        else:  # the positions noted last (restored from the checkpoint when resuming) if they are of this pass
            tracker = stream.tracker
            stream.set_epoch(pass_no, skip, tracker.state() if tracker.epoch == pass_no else None)
        return iter(loader)


class MixedTracker:
    """The stream trackers of a mixed loader's streamed parts, with the interface the training loop uses for one
    stream's :class:`~vlmo_cli.data.streaming.StreamTracker` (``note``, ``counters``, ``state``)."""

    def __init__(self, streams: dict[str, ShardStream]) -> None:
        self.streams = streams

    def note(self, batch: dict) -> None:
        """Take (pop) the streamed parts' ``sample_keys`` of a batch before it reaches the model (the mixed loader
        notes each part's position as it yields the batch)."""
        for key in [k for k in batch if k.endswith(".sample_keys")]:
            del batch[key]

    def counters(self) -> dict[str, int]:
        """The counters summed over the streamed parts (``bad_samples`` …) and per part (``image_bad_samples`` …)."""
        per_part = {name: stream.tracker.counters() for name, stream in self.streams.items()}
        out = {k: sum(counts[k] for counts in per_part.values()) for k in COUNTERS}
        out.update({f"{name}_{k}": counts[k] for name, counts in per_part.items() for k in COUNTERS})
        return out

    def state(self) -> dict:
        """What a checkpoint stores for this process (JSON-ready): each streamed part's tracker state and workers."""
        return {"parts": {name: {**stream.tracker.state(), "workers": stream.workers}
                          for name, stream in self.streams.items()}}


def part_stream_state(stream_state: dict | None, name: str, rank: int, world_size: int, workers: int) -> dict:
    """This process's saved state of streamed part ``name`` from a checkpoint's stream state (all processes; empty
    when the checkpoint holds none for this part and layout of processes and workers)."""
    ranks = (stream_state or {}).get("ranks") or []
    parts = {"world_size": (stream_state or {}).get("world_size"),
             "ranks": [r.get("parts", {}).get(name, {}) for r in ranks]}
    return resume_positions(parts, rank, world_size, workers)


def _collator(loader: DataLoader):
    """The collate function of a part: a shard stream collates inside the stream."""
    return loader.dataset.collate if isinstance(loader.dataset, ShardStream) else loader.collate_fn


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

