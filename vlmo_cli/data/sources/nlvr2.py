"""NLVR2 (lil-lab/nlvr ``nlvr2/data/{train,dev,test1}.json``, JSON lines) -> kind ``nlvr2``.

Each line: ``identifier`` (``split-set-pair-sentence``), ``sentence``, ``label`` ("True"/"False"), train lines also
``directory`` (image sub-folder). Images ``<prefix>-img0.png`` / ``<prefix>-img1.png`` with prefix = identifier minus its
last ``-N``, found under ``<images>/<split folder>/[<directory>/]`` or ``<images>/images/<split folder>/...`` (the
official layouts). One output row per sentence, label 1 for "True".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ...errors import DataError
from .base import Record, SkipLog, Source, iter_json_lines
from .common import Malformed, as_text

SPLIT_FILES = {"train": "train.json", "dev": "dev.json", "test1": "test1.json"}


class Nlvr2Source(Source):
    kind = "nlvr2"
    format = "nlvr2"

    def __init__(self, files: dict[str, Path], images: str | Path) -> None:
        self.files = {k: Path(v) for k, v in files.items()}
        missing = [str(p) for p in self.files.values() if not p.exists()]
        if missing:
            raise DataError(f"nlvr2: annotation files not found: {missing}")
        self.images = Path(images)
        if not self.images.is_dir():
            raise DataError(f"{self.images}: image folder not found")

    @classmethod
    def from_root(cls, annotations: str | Path, images: str | Path) -> "Nlvr2Source":
        """``annotations``: the ``nlvr2/data`` folder (``train.json``, ``dev.json``, ``test1.json``; any subset)."""
        root = Path(annotations)
        if root.is_file():
            return cls({root.stem: root}, images)
        files = {split: root / name for split, name in SPLIT_FILES.items() if (root / name).exists()}
        if not files:
            raise DataError(f"{root}: none of {list(SPLIT_FILES.values())} found")
        return cls(files, images)

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "files": {k: str(v) for k, v in self.files.items()}, "images": str(self.images)}

    def _folder(self, split: str, directory: Any) -> Path:
        sub = [str(directory)] if directory not in (None, "") else []
        for base in (self.images / split, self.images / "images" / split):
            candidate = base.joinpath(*sub)
            if candidate.is_dir():
                return candidate
        return (self.images / split).joinpath(*sub)

    def records(self, log: SkipLog) -> Iterator[Record]:
        for split, path in self.files.items():
            for number, obj in iter_json_lines(path, split, log):
                where = f"{path.name}:{number}"
                identifier, sentence, label = obj.get("identifier"), obj.get("sentence"), obj.get("label")
                if not identifier or not sentence or str(label) not in ("True", "False", "true", "false"):
                    log.add(split, where, "malformed NLVR2 line: needs identifier, sentence and label True/False")
                    continue
                try:
                    identifier, sentence = as_text(identifier, "identifier"), as_text(sentence, "sentence")
                except Malformed as exc:
                    log.add(split, where, str(exc))
                    continue
                prefix = str(identifier).rsplit("-", 1)[0]
                folder = self._folder(split, obj.get("directory"))
                left, right = folder / f"{prefix}-img0.png", folder / f"{prefix}-img1.png"
                yield Record(split, {"sentence": str(sentence), "label": int(str(label).lower() == "true"),
                                     "identifier": str(identifier)},
                             {"image_0": left, "image_1": right}, f"{where} ({identifier})")
