"""What every source reader yields: :class:`Record` rows with image references, and a :class:`SkipLog` of bad input.

A reader only parses its own format. Reading, validating and re-encoding images happens once, in the prepare engine
(:mod:`vlmo_cli.data.prepare`), in worker processes; so a reader stays a small generator and every format gets the
same treatment of broken images.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

#: An image reference: a path on disk or the encoded bytes themselves (webdataset members, HF datasets).
ImageRef = Union[str, Path, bytes]


@dataclass
class Record:
    """One output row before its images are resolved.

    Args:
        split: output split the row goes to.
        fields: the row's non-image columns.
        images: image column name -> reference; each is read, validated and stored as encoded bytes.
        where: where the row came from (``file:line`` or an id), for the skip report.
        image_key: when set, the image in ``images["image"]`` goes into the split's shared image table once per key
            and the row stores ``image_row`` instead of the bytes (VQA: many questions per image).
    """

    split: str
    fields: dict[str, Any]
    images: dict[str, ImageRef] = field(default_factory=dict)
    where: str = ""
    image_key: str | None = None


@dataclass
class Skip:
    split: str
    where: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"split": self.split, "where": self.where, "reason": self.reason}


class SkipLog:
    """Every skipped sample with its location and reason; never silent, never fatal on its own."""

    def __init__(self) -> None:
        self.items: list[Skip] = []

    def add(self, split: str, where: str, reason: str) -> None:
        self.items.append(Skip(split, str(where), reason))

    def __len__(self) -> int:
        return len(self.items)

    def by_reason(self) -> dict[str, int]:
        """Counts per reason class (the text before the first ':'), most frequent first."""
        counts = Counter(item.reason.split(":")[0] for item in self.items)
        return dict(counts.most_common())

    def summary(self, limit: int = 5) -> str:
        parts = [f"{n}x {reason}" for reason, n in self.by_reason().items()]
        examples = "; ".join(f"{s.where}: {s.reason}" for s in self.items[:limit])
        return ", ".join(parts) + (f" (e.g. {examples})" if examples else "")


def iter_json_lines(path: Path, split: str, log: SkipLog) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each well-formed JSON object line; malformed lines go to ``log``."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                log.add(split, f"{path.name}:{number}", f"malformed JSON line: {exc.msg}")
                continue
            if not isinstance(obj, dict):
                log.add(split, f"{path.name}:{number}", "malformed JSON line: not an object")
                continue
            yield number, obj


def load_json(path: Path, what: str) -> Any:
    """A whole JSON file, or a :class:`DataError` naming the file and what it should be."""
    from ...errors import DataError

    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected {what})") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read {what} ({exc})") from exc


class Source:
    """A reader of one external format.

    Subclasses set :attr:`kind` (a store kind, see :mod:`vlmo_cli.data.store`) and :attr:`format`, and implement
    :meth:`records`. Everything a reader knows only after reading (a VQA answer vocabulary, class names) is returned
    by :meth:`extra_files` once :meth:`records` is exhausted.
    """

    kind: str = ""
    format: str = ""
    #: pairs only: rows carry an integer ``label`` column
    with_label: bool = False
    #: pairs only: rows carry a ``group`` (duplicate group) column
    with_group: bool = False
    #: rows reference a shared per-split image table (see :attr:`Record.image_key`)
    image_table: bool = False

    def records(self, log: SkipLog) -> Iterator[Record]:
        raise TypeError(f"{type(self).__name__} must implement records()")

    def describe(self) -> dict[str, Any]:
        """What the manifest records as ``source`` (format, paths, options)."""
        return {"format": self.format}

    def extra_files(self) -> dict[str, Any]:
        """File name -> JSON content (or a Path to copy) to store next to the data."""
        return {}

    def manifest_extra(self) -> dict[str, Any]:
        """Extra top-level manifest keys (e.g. ``flip_ok: false`` when texts speak of left and right)."""
        return {}

    def estimate(self) -> int | None:
        """Expected number of records, for the progress bar; ``None`` when unknown (streams)."""
        return None
