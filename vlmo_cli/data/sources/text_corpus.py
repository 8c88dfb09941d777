"""Plain-text corpora -> kind ``text`` (for masked-language pre-training of the language experts).

Files (or folders of ``*.txt``, sorted) are read as one segment per non-empty line (``mode="lines"``, the wikibk
layout the official code reads) or one segment per blank-line separated paragraph (``mode="paragraphs"``, lines
joined with spaces). A seeded ``val_fraction`` of segments goes to ``val``. Undecodable bytes are reported, not fatal.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator

from ...errors import DataError
from .base import Record, SkipLog, Source


class TextCorpusSource(Source):
    kind = "text"
    format = "text"

    def __init__(self, paths: list[str | Path] | str | Path, *, mode: str = "lines", val_fraction: float = 0.0,
                 seed: int = 0, min_chars: int = 1) -> None:
        if mode not in ("lines", "paragraphs"):
            raise DataError(f"text mode {mode!r} is not allowed; allowed: lines, paragraphs")
        items = paths if isinstance(paths, (list, tuple)) else [paths]
        self.files: list[Path] = []
        for item in items:
            path = Path(item)
            if path.is_dir():
                self.files.extend(sorted(path.rglob("*.txt")))
            elif path.exists():
                self.files.append(path)
            else:
                raise DataError(f"{path}: text file not found")
        if not self.files:
            raise DataError(f"{items}: no .txt files found")
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val fraction must lie in [0, 1), got {val_fraction}")
        self.mode, self.val_fraction, self.seed, self.min_chars = mode, val_fraction, seed, min_chars

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "files": [str(f) for f in self.files], "mode": self.mode,
                "val_fraction": self.val_fraction}

    def _segments(self, path: Path, log: SkipLog) -> Iterator[tuple[int, str]]:
        paragraph: list[str] = []
        start = 0
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    log.add("train", f"{path}:{number}", "undecodable line: not UTF-8")
                    continue
                if self.mode == "lines":
                    if len(line) >= self.min_chars:
                        yield number, line
                elif line:
                    start = start or number
                    paragraph.append(line)
                elif paragraph:
                    yield start, " ".join(paragraph)
                    paragraph, start = [], 0
        if paragraph:
            yield start, " ".join(paragraph)

    def records(self, log: SkipLog) -> Iterator[Record]:
        rng = random.Random(self.seed)
        for path in self.files:
            for number, text in self._segments(path, log):
                split = "val" if self.val_fraction and rng.random() < self.val_fraction else "train"
                yield Record(split, {"text": text}, {}, f"{path.name}:{number}")
