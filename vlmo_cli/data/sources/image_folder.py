"""A folder tree of images -> kind ``images`` (for masked-image pre-training of the vision experts).

``image_id`` is the path relative to the root. When the root's sub-folders are named ``train`` / ``val`` /
``validation`` / ``test`` they become splits; otherwise every image goes to ``train``. Files are visited in sorted
order, so the output is deterministic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ...errors import DataError
from .base import Record, SkipLog, Source
from ...layout import IMAGE_SUFFIXES

SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


class ImageFolderSource(Source):
    kind = "images"
    format = "images"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: image folder not found")
        self.files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise DataError(f"{self.root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
        tops = {p.relative_to(self.root).parts[0] for p in self.files if len(p.relative_to(self.root).parts) > 1}
        self.by_folder = bool(tops) and tops <= set(SPLIT_FOLDERS)

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "root": str(self.root), "splits_from_folders": self.by_folder}

    def estimate(self) -> int:
        return len(self.files)

    def records(self, log: SkipLog) -> Iterator[Record]:
        for path in self.files:
            rel = path.relative_to(self.root)
            split = SPLIT_FOLDERS[rel.parts[0]] if self.by_folder and len(rel.parts) > 1 else "train"
            yield Record(split, {"image_id": rel.as_posix()}, {"image": path}, rel.as_posix())
