"""Write any source the toolkit reads as webdataset shards (``vlmo prepare ... --out-format webdataset``).

Layout of the output folder::

    OUT/<split>/00000.tar, 00001.tar, ...   samples in source order, ``samples_per_shard`` per shard
    OUT/<split>/sizes.json                  {"00000.tar": n, ...}: the counts a streamed epoch is sized from
    OUT/shards.json                         source, splits, counts, skipped samples with where and why

Samples (key = running number of the split): ``pairs`` -> one sample per caption, ``jpg``/``png``/``webp`` +
``txt`` (the caption) + ``json`` (``image_id``, ``caption_index``, the row's other fields); a streamed loader treats
samples with one ``image_id`` as one image (its other captions are positives, not negatives). ``images`` -> image +
``json``; ``text`` -> ``txt``. Images go through the same validation (and ``max_size`` re-encoding) as
:func:`vlmo_cli.data.prepare.prepare`; bad samples are skipped, counted and listed.

Sources of several corpora become one shard set by listing their folders' shards in a recipe's ``dataset``.
The output follows :mod:`vlmo_cli.outputs`: written in a temporary sibling, renamed into place, never replacing a
folder holding anything it did not write.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import DataError
from ..outputs import DirectoryOutput, DirKind
from .prepare import PrepareOptions, check_bad_fraction, record_chunks, RecordPool
from .sources.base import SkipLog, Source

SHARDS = DirKind("vlmo prepare --out-format webdataset", frozenset(), "shards.json")
#: store kinds that have a webdataset form
SHARD_KINDS = ("pairs", "images", "text")


def image_ext(data: bytes) -> str:
    """The member extension of encoded image bytes (the prepare engine keeps JPEG, PNG and WebP as they are)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise DataError("an image the prepare engine kept is neither JPEG, PNG nor WebP")  # cannot happen: a bug


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "split"


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)


class _SplitShards:
    """The shards of one split, written one after another."""

    def __init__(self, folder: Path, per_shard: int) -> None:
        from webdataset import TarWriter

        self.folder, self.per_shard, self.TarWriter = folder, per_shard, TarWriter
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sizes: dict[str, int] = {}
        self.writer = None
        self.count = 0

    def write(self, sample: dict[str, Any]) -> None:
        if self.writer is None or self.sizes[self.name] >= self.per_shard:
            self.close_shard()
            self.name = f"{len(self.sizes):05d}.tar"
            self.sizes[self.name] = 0
            # a fixed integer mtime: reproducible shards, and plain ustar headers (a float mtime adds a PAX header to
            # every member, which doubles the header parsing of every reader)
            self.writer = self.TarWriter(str(self.folder / self.name), mtime=0)
        self.writer.write({"__key__": f"{self.count:09d}", **sample})
        self.sizes[self.name] += 1
        self.count += 1

    def close_shard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def finish(self) -> None:
        self.close_shard()
        (self.folder / "sizes.json").write_text(json.dumps(self.sizes, indent=1) + "\n")


def _samples(kind: str, fields: dict[str, Any], images: dict[str, bytes]) -> list[dict[str, Any]]:
    """The webdataset samples of one prepared row."""
    meta = {k: _plain(v) for k, v in fields.items() if k not in ("captions", "text")}
    if kind == "text":
        return [{"txt": str(fields["text"]), "json": json.dumps(meta).encode()}]
    data = images["image"]
    image = {image_ext(data): data}
    if kind == "images":
        return [{**image, "json": json.dumps(meta).encode()}]
    return [{**image, "txt": caption, "json": json.dumps({**meta, "caption_index": i}).encode()}
            for i, caption in enumerate(fields["captions"])]


def write_shards(source: Source, out: str | Path, options: PrepareOptions | None = None,
                 samples_per_shard: int = 5000) -> dict[str, Any]:
    """Write ``source`` as webdataset shards under ``out`` (layout: module docstring); returns ``shards.json``."""
    options = options or PrepareOptions()
    if source.kind not in SHARD_KINDS:
        raise DataError(f"{source.format}: --out-format webdataset writes {', '.join(SHARD_KINDS)} data; this source "
                        f"is {source.kind!r} (prepare it as a directory instead)")
    if samples_per_shard < 1:
        raise DataError(f"--samples-per-shard must be >= 1, got {samples_per_shard}")
    if not 0.0 <= options.max_bad_fraction <= 1.0:
        raise DataError(f"max_bad_fraction must lie in [0, 1], got {options.max_bad_fraction}")
    started = time.perf_counter()
    log = SkipLog()
    splits: dict[str, _SplitShards] = {}
    rows = samples = 0
    buffer: list = []
    pool = RecordPool(options.workers)
    try:
        with DirectoryOutput(out, SHARDS, overwrite=options.overwrite, inputs=options.inputs) as tmp:
            for results in pool.map_chunks(record_chunks(source.records(log), options.max_size, set(), buffer)):
                for record, resolved in zip(buffer.pop(0), results):
                    errors = [e for _, e in resolved.values() if e is not None]
                    if errors:
                        log.add(record.split, record.where, errors[0])
                        continue
                    images = {name: data for name, (data, _) in resolved.items()}
                    if record.split not in splits:
                        splits[record.split] = _SplitShards(tmp / _safe(record.split), samples_per_shard)
                    for sample in _samples(source.kind, record.fields, images):
                        splits[record.split].write(sample)
                        samples += 1
                    rows += 1
                check_bad_fraction(rows, log, options.max_bad_fraction, early=True)
            check_bad_fraction(rows, log, options.max_bad_fraction, early=False)
            if rows == 0:
                raise DataError(f"{source.format}: no usable samples" + (f": {log.summary()}" if len(log) else ""))
            for shards in splits.values():
                shards.finish()
            summary = {
                "format": "webdataset",
                "kind": source.kind,
                "source": source.describe(),
                "splits": {split: {"folder": _safe(split), "samples": s.count, "shards": len(s.sizes)}
                           for split, s in splits.items()},
                "counts": {"rows": rows, "samples": samples, "skipped": len(log)},
                "skipped_by_reason": log.by_reason(),
                "skipped": [item.to_dict() for item in log.items],
                "max_size": options.max_size,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.perf_counter() - started, 3),
                "vlmo_cli_version": __version__,
            }
            (tmp / "shards.json").write_text(json.dumps(summary, indent=1) + "\n")
    finally:
        for shards in splits.values():
            shards.close_shard()
        pool.close()
    return summary
