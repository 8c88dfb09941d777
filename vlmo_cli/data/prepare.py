"""The prepare engine: run a :class:`~vlmo_cli.data.sources.base.Source`, resolve its images in worker processes and
write a prepared dataset directory (:mod:`vlmo_cli.data.store`).

Guarantees: output rows keep the source order (so a seed fully determines the result); a bad sample is skipped,
counted and listed in the manifest with where it came from and why; a source where more than ``max_bad_fraction`` of
the samples are bad fails with a summary instead of producing a mostly-empty dataset; a finished output is never
overwritten without ``overwrite=True``.
"""

from __future__ import annotations

import multiprocessing
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .. import __version__
from ..errors import DataError
from ..outputs import raise_if_disk_full
from .images import load_image_bytes
from .sources.base import Record, SkipLog, Source
from .store import SCHEMA_VERSION, StoreWriter, check_output, kind_features

CHUNK = 256  # records per worker round trip; bounds memory for streamed sources
EARLY_CHECK = 1000  # samples seen before the bad-fraction check may abort early


@dataclass
class PrepareOptions:
    """Args:
    workers: image worker processes (0 = decode in this process).
    seed: seed handed to sources that hold out or shuffle anything; the output is a function of (source, seed).
    max_size: limit the shorter image side to this many pixels (re-encoding), ``None`` keeps images as they are.
    overwrite: replace a finished prepared directory at the output path.
    max_bad_fraction: fail when more than this fraction of samples is skipped.
    progress: show a rich progress bar on stderr.
    tokenizer: a tokenizer (``vocab.txt``, ``tokenizer.json`` or a folder) to store with the data.
    tokenizer_name: how the manifest names the tokenizer's origin (default: its path).
    inputs: paths the output may not replace (the source's files and folders).
    """

    workers: int = 0
    seed: int = 0
    max_size: int | None = None
    overwrite: bool = False
    max_bad_fraction: float = 0.5
    progress: bool = False
    tokenizer: str | Path | None = None
    tokenizer_name: str | None = None
    inputs: tuple[str | Path, ...] = ()


def _resolve(job: tuple[dict[str, Any], int | None]) -> dict[str, tuple[bytes | None, str | None]]:
    images, max_size = job
    return {name: load_image_bytes(ref, max_size) for name, ref in images.items()}


class RecordPool:
    """Ordered, bounded parallel map over record chunks (or in-process when ``workers == 0``)."""

    def __init__(self, workers: int) -> None:
        self.pool = None
        if workers > 0:
            method = "fork" if platform.system() == "Linux" else "spawn"
            self.pool = multiprocessing.get_context(method).Pool(workers)

    def map_chunks(self, chunks: Iterator[list[tuple[dict, int | None]]]) -> Iterator[list[dict]]:
        if self.pool is None:
            for chunk in chunks:
                yield [_resolve(job) for job in chunk]
            return
        pending = None
        for chunk in chunks:
            submitted = self.pool.map_async(_resolve, chunk, chunksize=max(1, len(chunk) // 32))
            if pending is not None:
                yield pending.get()
            pending = submitted
        if pending is not None:
            yield pending.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def record_chunks(records: Iterator[Record], max_size: int | None, seen_keys: set[str], buffer: list[list[Record]]):
    """Record chunks -> job chunks; images of already-queued ``image_key`` s are not decoded twice."""
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= CHUNK:
            yield _jobs(chunk, max_size, seen_keys, buffer)
            chunk = []
    if chunk:
        yield _jobs(chunk, max_size, seen_keys, buffer)


def _jobs(chunk: list[Record], max_size, seen_keys: set[str], buffer: list[list[Record]]):
    jobs = []
    for record in chunk:
        images = record.images
        if record.image_key is not None:
            key = f"{record.split}\0{record.image_key}"
            if key in seen_keys:
                images = {}
            seen_keys.add(key)
        jobs.append((images, max_size))
    buffer.append(chunk)
    return jobs


def prepare(source: Source, out: str | Path, options: PrepareOptions | None = None) -> dict[str, Any]:
    """Write the prepared dataset of ``source`` to ``out``; returns its manifest."""
    options = options or PrepareOptions()
    out = Path(out)
    inputs = (*options.inputs, *([options.tokenizer] if options.tokenizer is not None else []))
    check_output(out, options.overwrite, inputs)
    if not 0.0 <= options.max_bad_fraction <= 1.0:
        raise DataError(f"max_bad_fraction must lie in [0, 1], got {options.max_bad_fraction}")
    tokenizer_info, tokenizer_obj = None, None
    if options.tokenizer is not None:
        from .tokenizer import load_tokenizer

        tokenizer_obj = load_tokenizer(options.tokenizer)
        tokenizer_info = {"path": "tokenizer", "source": options.tokenizer_name or str(options.tokenizer),
                          **tokenizer_obj.describe()}

    features = kind_features(source.kind, with_label=source.with_label, with_group=source.with_group)
    writer = StoreWriter(out, source.kind, features, image_table=source.image_table, overwrite=options.overwrite,
                         inputs=inputs)
    log = SkipLog()
    counts = {"rows": 0, "images": 0}
    table_rows: dict[str, dict[str, int | str]] = {}  # split -> image_key -> table row or failure reason
    seen: set[str] = set()
    buffer: list[list[Record]] = []
    started = time.perf_counter()
    pool = RecordPool(options.workers)
    progress = _Progress(options.progress, source)
    try:
        for results in pool.map_chunks(record_chunks(source.records(log), options.max_size, seen, buffer)):
            chunk = buffer.pop(0)
            for record, resolved in zip(chunk, results):
                _emit(record, resolved, writer, log, counts, table_rows)
            progress.advance(len(chunk), counts["rows"], len(log))
            check_bad_fraction(counts["rows"], log, options.max_bad_fraction, early=True)
        check_bad_fraction(counts["rows"], log, options.max_bad_fraction, early=False)
        if counts["rows"] == 0:
            raise DataError(f"{source.format}: no usable samples" + (f": {log.summary()}" if len(log) else ""))
        extra = dict(source.extra_files())
        if tokenizer_obj is not None:
            extra["tokenizer"] = tokenizer_obj.save
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "kind": source.kind,
            "source": source.describe(),
            "splits": dict(writer.sizes),
            "image_table": dict(writer.table_sizes) if source.image_table else None,
            "counts": {**counts, "skipped": len(log)},
            "skipped_by_reason": log.by_reason(),
            "skipped": [item.to_dict() for item in log.items],
            "tokenizer": tokenizer_info,
            "seed": options.seed,
            "max_size": options.max_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.perf_counter() - started, 3),
            "vlmo_cli_version": __version__,
            **source.manifest_extra(),
        }
        writer.publish(manifest, extra)
    except BaseException as exc:
        writer.abort()
        raise_if_disk_full(exc, out)
        raise
    finally:
        pool.close()
        progress.close()
    return manifest


def _emit(record: Record, resolved: dict, writer: StoreWriter, log: SkipLog, counts: dict, table_rows: dict) -> None:
    row = dict(record.fields)
    if record.image_key is not None:
        table = table_rows.setdefault(record.split, {})
        if record.image_key not in table:
            data, error = resolved["image"]
            if error is None:
                table[record.image_key] = writer.write_image(record.split, {"image": {"bytes": data, "path": None},
                                                                            "image_id": record.image_key})
                counts["images"] += 1
            else:
                table[record.image_key] = error
        entry = table[record.image_key]
        if isinstance(entry, str):
            log.add(record.split, record.where, entry)
            return
        row["image_row"] = entry
    else:
        for name, (data, error) in resolved.items():
            if error is not None:
                log.add(record.split, record.where, error if name == "image" else f"{error} ({name})")
                return
            row[name] = {"bytes": data, "path": None}
        counts["images"] += len(resolved)
    writer.write(record.split, row)
    counts["rows"] += 1
    if "captions" in row:
        counts["captions"] = counts.get("captions", 0) + len(row["captions"])


def check_bad_fraction(rows: int, log: SkipLog, limit: float, *, early: bool) -> None:
    total = rows + len(log)
    if total == 0 or (early and total < EARLY_CHECK):
        return
    fraction = len(log) / total
    if fraction > limit:
        raise DataError(
            f"{len(log)} of {total} samples are bad ({fraction:.0%} > max_bad_fraction {limit:.0%}"
            f"{', checked early' if early else ''}): {log.summary()}"
        )


class _Progress:
    """A rich progress bar with rate and ETA on stderr (no-op when disabled)."""

    def __init__(self, enabled: bool, source: Source) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task(f"prepare {source.format}", total=source.estimate(), rate="", status="")

    def advance(self, n: int, rows: int, skipped: int) -> None:
        if self.bar is None:
            return
        self.bar.advance(self.task, n)
        speed = self.bar.tasks[0].speed
        rate = f"{speed:,.0f} samples/s" if speed else ""
        self.bar.update(self.task, rate=rate, status=f"{rows} kept, {skipped} skipped")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
