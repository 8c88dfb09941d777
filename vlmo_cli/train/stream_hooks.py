"""What the training loop needs for data streamed from webdataset shards: options from the recipe, run-wide counters
for metrics.jsonl and the end-of-run note."""

from __future__ import annotations

import torch

from ..data.streaming import COUNTERS, StreamOptions, StreamTracker


def stream_options(data) -> StreamOptions:
    """The shard-stream options of a recipe's ``[data]`` settings."""
    return StreamOptions(samples_per_epoch=data.stream_samples_per_epoch, shuffle_buffer=data.stream_shuffle_buffer,
                         resampled=data.stream_resampled, caption_key=data.stream_caption_key)


def stream_metrics(tracker: StreamTracker, accelerator) -> dict[str, int]:
    """``stream_bad_samples``, ``stream_bad_shards``, ``stream_refills`` so far (and any further counter the tracker
    keeps: a mixed loader's per part, ``stream_image_bad_samples`` …), summed over processes (a collective when there
    are several)."""
    counts = tracker.counters()
    names = [*COUNTERS, *(k for k in counts if k not in COUNTERS)]
    values = torch.tensor([counts[k] for k in names], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, "sum")
    return {f"stream_{k}": int(v) for k, v in zip(names, values.tolist())}


def stream_summary(counts: dict[str, int]) -> str:
    """One line for the end of a streamed run."""
    return (f"shard stream: {counts['stream_bad_samples']} unusable sample(s) skipped, "
            f"{counts['stream_bad_shards']} unreadable shard(s), {counts['stream_refills']} stream refill(s) "
            "(a stream that ran dry read its shards again)")
