"""Text padding trimmed before a training step: the columns that are padding in every row of the batch (and of every
process's batch) are cut off (exact, see :func:`~vlmo_cli.data.collate.trim_text_padding`)."""

from __future__ import annotations

import torch

from ..data.collate import text_extent, trim_text_padding
from ..objectives.distributed import max_across

#: distinct trimmed text lengths under ``torch.compile``: every new shape compiles the step again (40-60 s each
#: for tiny on a CPU), and past dynamo's recompile limit (8) it silently falls back to eager
COMPILED_LENGTH_BUCKETS = 4


def bucket_length(length: int, full: int, buckets: int) -> int:
    """``length`` rounded up to one of ``buckets`` evenly spaced lengths ending at ``full`` (e.g. 10/20/30/40)."""
    step = -(-full // buckets)
    return min(full, -(-length // step) * step)


def trimmed_length(batch: dict[str, torch.Tensor], buckets: int | None = None) -> int | None:
    """This process's text length after trimming (``None`` without text); see :func:`trim_to_longest`."""
    extent = text_extent(batch)
    if extent is not None and buckets:
        extent = bucket_length(extent, batch["attention_mask"].shape[1], buckets)
    return extent


@torch.compiler.disable  # reads lengths back from the device: kept out of the compiled graph
def trim_to_longest(batch: dict[str, torch.Tensor], buckets: int | None = None) -> dict[str, torch.Tensor]:
    """Cut the text padding every process's batch shares (:func:`~vlmo_cli.data.collate.trim_text_padding`).

    The length is agreed across processes so that hard-negative texts fetched from another process fit; with
    ``buckets`` it is rounded up to one of that many lengths (few shapes for ``torch.compile``).
    """
    length = trimmed_length(batch, buckets)
    if length is None:
        return batch
    return trim_text_padding(batch, max_across(length, batch["attention_mask"].device))
