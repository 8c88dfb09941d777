"""COCO and Flickr30k Karpathy splits (``dataset_coco.json`` / ``dataset_flickr30k.json``) -> kind ``pairs``.

One row per image with *every* caption (``sentences[*].raw``; a few COCO images have more than five). Splits are the
file's own ``train`` / ``restval`` / ``val`` / ``test``; read ``"train+restval"`` for the usual 113k training set.
Image path: ``<images>/<filepath>/<filename>`` for COCO, ``<images>/<filename>`` for Flickr30k (a ``filepath`` field
is honoured when present; for COCO ``<images>/<filename>`` is tried too, for flat folders).
``group_field`` (``--group-field``) names an image-level field whose value is stored as the duplicate-group key
(``group`` column: images sharing it are never each other's ITM hard negatives under ``itm_exclude_same_group``);
an entry without it is a group of its own, a field no entry has is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ...errors import DataError
from .base import Record, SkipLog, Source, load_json
from .common import Malformed, as_captions, as_text, json_type


class KarpathySource(Source):
    kind = "pairs"

    def __init__(self, annotations: str | Path, images: str | Path, *, dataset: str = "coco",
                 splits: tuple[str, ...] | None = None, group_field: str | None = None) -> None:
        self.annotations = Path(annotations)
        self.images = Path(images)
        self.dataset = dataset
        self.format = f"{dataset}-karpathy"
        self.splits = splits
        data = load_json(self.annotations, f"a Karpathy split file ({'dataset_coco.json' if dataset == 'coco' else 'dataset_flickr30k.json'})")
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(f"{self.annotations}: expected an object with an 'images' list (Karpathy split format)")
        self.entries: list[Any] = data["images"]
        self.group_field = group_field
        self.with_group = group_field is not None
        if group_field is not None and not any(isinstance(e, dict) and group_field in e for e in self.entries):
            first = next((sorted(e) for e in self.entries if isinstance(e, dict)), [])
            raise DataError(f"{self.annotations}: no image entry has the field {group_field!r} (--group-field); "
                            f"fields are {first}")
        if not self.images.is_dir():
            raise DataError(f"{self.images}: image folder not found")

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "annotations": str(self.annotations), "images": str(self.images),
                "splits": list(self.splits) if self.splits else None, "group_field": self.group_field}

    def estimate(self) -> int:
        return len(self.entries)

    def _path(self, entry: dict[str, Any]) -> Path:
        filename = entry["filename"]
        if entry.get("filepath"):
            nested = self.images / str(entry["filepath"]) / filename
            if nested.exists() or not (self.images / filename).exists():
                return nested
        return self.images / filename

    @staticmethod
    def _captions(sentences: Any) -> list[str]:
        """The stripped non-empty ``raw`` texts of an entry's ``sentences`` list (:class:`Malformed` otherwise)."""
        if not isinstance(sentences, list):
            raise Malformed(f"malformed entry: sentences is {json_type(sentences)}, not a list")
        raws = [s.get("raw") for s in sentences if isinstance(s, dict)]
        return as_captions([r for r in raws if r is not None])

    def records(self, log: SkipLog) -> Iterator[Record]:
        for index, entry in enumerate(self.entries):
            where = f"{self.annotations.name}:images[{index}]"
            if not isinstance(entry, dict) or "filename" not in entry or "split" not in entry:
                log.add("?", where, "malformed entry: needs 'filename', 'split' and 'sentences'")
                continue
            split = str(entry["split"])
            if self.splits and split not in self.splits:
                continue
            try:
                filename = as_text(entry["filename"], "filename")
                captions = self._captions(entry.get("sentences", []))
            except Malformed as exc:
                log.add(split, where, str(exc))
                continue
            where = f"{self.annotations.name}:{filename}"
            if not filename.strip():
                log.add(split, where, "malformed entry: empty filename")
                continue
            if not captions:
                log.add(split, where, "no captions")
                continue
            fields = {"image_id": filename, "captions": captions, "split": split}
            if self.with_group:
                value = entry.get(self.group_field)
                fields["group"] = None if value is None or isinstance(value, (dict, list)) else str(value)
            yield Record(split, fields, {"image": self._path(entry)}, where)
