"""``vlmo prepare inspect``: what a prepared directory holds, as a plain dict (the CLI renders it)."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

from .store import open_prepared

LENGTH_BINS = (5, 10, 15, 20, 30, 40, 60, 100)


def length_histogram(lengths: list[int]) -> dict[str, int]:
    """Counts of word lengths in bins ``<=5``, ``6-10``, ... ``>100``."""
    out: dict[str, int] = {}
    low = 0
    for high in LENGTH_BINS:
        out[f"{low + 1}-{high}"] = sum(low < n <= high for n in lengths)
        low = high
    out[f">{LENGTH_BINS[-1]}"] = sum(n > LENGTH_BINS[-1] for n in lengths)
    return {k: v for k, v in out.items() if v}


def _image_size(cell: dict[str, Any] | None) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(cell["bytes"])) as img:
            return f"{img.format} {img.size[0]}x{img.size[1]}, {len(cell['bytes'])} bytes"
    except Exception as exc:
        return f"unreadable ({exc})"


def summarize(path: str | Path, samples: int = 3, max_rows: int = 100_000) -> dict[str, Any]:
    """Counts, split sizes, text length histogram, answer distribution, a few samples and the skip report.

    Statistics are computed on the first ``max_rows`` rows of each split (all of them for usual sizes).
    """
    prepared = open_prepared(path)
    manifest = prepared.manifest
    out: dict[str, Any] = {
        "path": str(prepared.root), "kind": prepared.kind, "source": manifest.get("source"),
        "splits": manifest["splits"], "counts": manifest.get("counts", {}), "tokenizer": manifest.get("tokenizer"),
        "skipped_by_reason": manifest.get("skipped_by_reason", {}), "skipped": manifest.get("skipped", []),
    }
    lengths: list[int] = []
    for split in prepared.splits:
        for i, text in enumerate(prepared.texts(split)):
            if i >= max_rows:
                break
            lengths.append(len(text.split()))
    if lengths:
        out["text_length_words"] = {"histogram": length_histogram(lengths), "mean": round(sum(lengths) / len(lengths), 2),
                                    "max": max(lengths)}
    if prepared.kind == "vqa":
        answers = prepared.answers
        counts: Counter[str] = Counter()
        for split in prepared.splits:
            ds = prepared.split(split).select_columns(["labels", "scores"])
            for labels, scores in zip(ds[:max_rows]["labels"], ds[:max_rows]["scores"]):
                if labels:
                    counts[answers[labels[max(range(len(scores)), key=scores.__getitem__)]]] += 1
        out["num_answers"] = len(answers)
        out["top_answers"] = dict(counts.most_common(10))
    if prepared.kind in ("nlvr2",) or (prepared.kind == "pairs" and (prepared.root / "labels.json").exists()):
        labels: Counter[int] = Counter()
        for split in prepared.splits:
            labels.update(prepared.split(split).select_columns(["label"])[:max_rows]["label"])
        out["labels"] = dict(sorted(labels.items()))
    examples = []
    first = prepared.splits[0]
    ds = prepared.split(first)
    for index in range(min(samples, len(ds))):
        row = dict(ds[index])
        if prepared.kind == "vqa":
            row["image"] = prepared.image_table(first)[int(row["image_row"])]["image"]
        for key, value in list(row.items()):
            if isinstance(value, dict) and "bytes" in value:
                row[key] = _image_size(value)
        examples.append({"split": first, **row})
    out["samples"] = examples
    return out
