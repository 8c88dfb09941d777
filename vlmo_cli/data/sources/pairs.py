"""Image-text pairs from files users already have -> kind ``pairs`` (one row per image, all its captions).

Formats:

- ``tsv`` / ``csv``: CC3M/SBU-style lists. With a header, columns are found by name (``--image-col`` /
  ``--caption-col``, or the usual names ``image``/``image_path``/``filepath``/``file_name``... and
  ``caption``/``text``...). Without a header give column numbers (``--image-col 0 --caption-col 1``); a headerless
  two-column file is read as (image, caption), or (caption, image) when the second column looks like an image file.
- ``json``: a list of ``[image, caption]`` pairs (VLMo ``annot.json``) or of objects (ALBEF/BLIP style
  ``{"image": ..., "caption": str | [str, ...]}``), optionally under a top-level ``annotations``/``data`` key.
- ``jsonl``: one object per line.
- ``vg``: Visual Genome ``region_descriptions.json``; captions are the region phrases, images
  ``<images>/VG_100K[_2]/<id>.jpg`` (or flat).

Rows naming the same image (or the same ``--id-col`` value) are grouped into one row with all captions, unless a
``--label-col`` is given: then every row is a labelled (image, caption, label) example for classification and the
class names go to ``labels.json``. Relative image paths are resolved against ``--images`` (default: the file's
folder). ``--split-col`` takes splits from a column, otherwise everything goes to ``split`` with an optional seeded
``val_fraction`` hold-out: whole images, as close to that fraction of the rows as the grouping allows.
``--group-col`` (tsv/csv/json/jsonl) stores a duplicate-group key per image (the ``group`` column): images whose
rows name the same value show the same thing and are kept out of each other's ITM hard negatives under
``itm_exclude_same_group``; an empty or missing value makes an image a group of its own.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterator

from ...errors import DataError
from .base import Record, SkipLog, Source, iter_json_lines, load_json
from ...layout import IMAGE_SUFFIXES
from .common import (
    CAPTION_COLUMNS, IMAGE_COLUMNS, LabelMap, Malformed, as_captions, as_label, holdout, json_type,
    pick_column,
)

PAIR_FORMATS = ("tsv", "csv", "json", "jsonl", "vg", "hf", "webdataset")


class _Row:
    __slots__ = ("key", "image", "captions", "label", "split", "where", "group")

    def __init__(self, key, image, captions, label, split, where, group=None) -> None:
        self.key, self.image, self.captions, self.label, self.split, self.where = key, image, captions, label, split, where
        self.group = group


class GroupedPairsSource(Source):
    """Base of readers that first collect rows (path or bytes + captions), then group, split and label them."""

    kind = "pairs"

    def __init__(self, *, split: str = "train", val_fraction: float = 0.0, seed: int = 0,
                 label_col: str | None = None, group: bool = True, group_col: str | None = None) -> None:
        self.split = split
        self.group_col = group_col
        self.with_group = group_col is not None
        self.val_fraction = val_fraction
        self.seed = seed
        self.label_col = label_col
        self.with_label = label_col is not None
        self.group = group and label_col is None
        self.labels: LabelMap | None = None

    def rows(self, log: SkipLog) -> Iterator[_Row]:
        raise TypeError(f"{type(self).__name__} must implement rows()")

    def extra_files(self) -> dict[str, Any]:
        return {"labels.json": self.labels.names} if self.labels is not None else {}

    def records(self, log: SkipLog) -> Iterator[Record]:
        rows = list(self.rows(log))
        if self.with_label:
            self.labels = LabelMap([r.label for r in rows])
        if self.group:
            merged: dict[tuple[str, str], _Row] = {}
            for r in rows:
                key = (r.split, r.key)
                if key in merged:
                    merged[key].captions.extend(r.captions)
                else:
                    merged[key] = r
            rows = list(merged.values())
        held = holdout([r.key for r in rows if r.split == self.split], self.val_fraction, self.seed)
        for r in rows:
            split = "val" if r.split == self.split and r.key in held else r.split
            fields: dict[str, Any] = {"image_id": r.key, "captions": r.captions, "split": split}
            if self.with_label:
                fields["label"] = self.labels(r.label)
            if self.with_group:
                fields["group"] = r.group
            yield Record(split, fields, {"image": r.image}, r.where)


def _group_value(value: Any) -> str | None:
    """A duplicate-group cell -> its text (numbers too), or ``None`` (a group of its own) when empty or null."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (dict, list)):
        raise Malformed(f"malformed group: {json_type(value)}, not text or a number")
    return str(value).strip()


class FilePairsSource(GroupedPairsSource):
    """``tsv``, ``csv``, ``json`` and ``jsonl`` lists of (image, caption[, label])."""

    def __init__(self, path: str | Path, fmt: str, *, images: str | Path | None = None,
                 image_col: str | int | None = None, caption_col: str | int | None = None,
                 id_col: str | None = None, split_col: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: file not found")
        if fmt not in ("tsv", "csv", "json", "jsonl"):
            raise DataError(f"pairs format {fmt!r} is not a file list; allowed: tsv, csv, json, jsonl")
        self.format = f"pairs-{fmt}"
        self.fmt = fmt
        self.images = Path(images) if images is not None else self.path.parent
        self.image_col, self.caption_col = image_col, caption_col
        self.id_col, self.split_col = id_col, split_col

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "path": str(self.path), "images": str(self.images),
                "image_col": self.image_col, "caption_col": self.caption_col, "id_col": self.id_col,
                "label_col": self.label_col, "split_col": self.split_col, "group_col": self.group_col,
                "val_fraction": self.val_fraction}

    def _resolve(self, value: Any) -> str:
        path = Path(str(value))
        return str(path if path.is_absolute() else self.images / path)

    def _row(self, get, where: str, log: SkipLog) -> _Row | None:
        try:
            image = get(self.image_col)
            captions = as_captions(get(self.caption_col))
            label = as_label(get(self.label_col)) if self.label_col is not None else None
            split = str(get(self.split_col)) if self.split_col is not None else self.split
            key = str(get(self.id_col)) if self.id_col is not None else str(image)
            group = _group_value(get(self.group_col)) if self.group_col is not None else None
        except (KeyError, IndexError):
            log.add(self.split, where, "malformed row: missing column")
            return None
        except TypeError:  # a [image, caption] list among objects, or the other way round
            log.add(self.split, where, "malformed row: not shaped like the first row (a list vs an object)")
            return None
        except Malformed as exc:
            log.add(self.split, where, str(exc))
            return None
        if image in (None, ""):
            log.add(split, where, "malformed row: no image")
            return None
        if not isinstance(image, str):
            log.add(split, where, f"malformed image: {json_type(image)}, not a file path")
            return None
        if not captions and not self.with_label:
            log.add(split, where, "empty caption")
            return None
        if self.with_label and label in (None, ""):
            log.add(split, where, "malformed row: no label")
            return None
        return _Row(key, self._resolve(image), captions or [""], label, split, where, group)

    def rows(self, log: SkipLog) -> Iterator[_Row]:
        if self.fmt in ("tsv", "csv"):
            yield from self._delimited(log)
        elif self.fmt == "jsonl":
            first = True
            for number, obj in iter_json_lines(self.path, self.split, log):
                if first:
                    self._pick(obj.keys())
                    first = False
                row = self._row(lambda c: obj[c], f"{self.path.name}:{number}", log)
                if row is not None:
                    yield row
        else:
            yield from self._json(log)

    def _pick(self, columns) -> None:
        where = str(self.path)
        self.image_col = pick_column(columns, self.image_col, IMAGE_COLUMNS, "image", where)
        self.caption_col = pick_column(columns, self.caption_col, CAPTION_COLUMNS, "caption", where)
        for name, col in (("label", self.label_col), ("id", self.id_col), ("split", self.split_col),
                          ("group", self.group_col)):
            if col is not None:
                pick_column(columns, col, (), name, where)

    def _json(self, log: SkipLog) -> Iterator[_Row]:
        data = load_json(self.path, "a JSON list of [image, caption] pairs or objects")
        if isinstance(data, dict):
            data = next((data[k] for k in ("annotations", "data", "images") if isinstance(data.get(k), list)), None)
        if not isinstance(data, list):
            raise DataError(f"{self.path}: expected a JSON list (or an object with an 'annotations'/'data' list)")
        if data and isinstance(data[0], (list, tuple)):
            self.image_col = 0 if self.image_col is None else int(self.image_col)
            self.caption_col = 1 if self.caption_col is None else int(self.caption_col)
        elif data and isinstance(data[0], dict):
            self._pick(data[0].keys())
        for index, item in enumerate(data):
            where = f"{self.path.name}[{index}]"
            if not isinstance(item, (list, tuple, dict)):
                log.add(self.split, where, "malformed row: not a list or object")
                continue
            row = self._row(lambda c: item[c], where, log)
            if row is not None:
                yield row

    def _delimited(self, log: SkipLog) -> Iterator[_Row]:
        delimiter = "\t" if self.fmt == "tsv" else ","
        with open(self.path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if self.fmt == "csv" else csv.QUOTE_NONE)
            first = next(reader, None)
            if first is None:
                return
            given = [c for c in (self.image_col, self.caption_col) if c is not None]
            positional = bool(given) and all(isinstance(c, int) or str(c).isdigit() for c in given)
            known = set(IMAGE_COLUMNS) | set(CAPTION_COLUMNS) | {str(c) for c in given}
            header_like = any(cell.strip().lower() in known for cell in first)
            if header_like and not positional:
                header = [c.strip() for c in first]
                self._pick(header)
                index = {name: i for i, name in enumerate(header)}
                lookup = lambda cells, col: cells[index[col]]  # noqa: E731
                start_rows: list[list[str]] = []
            elif given and not positional:
                raise DataError(f"{self.path}: no header row naming columns {given}; first row is {first}")
            else:
                if self.image_col is None:
                    looks_image = len(first) > 1 and first[1].strip().lower().endswith(IMAGE_SUFFIXES)
                    self.image_col, self.caption_col = (1, 0) if looks_image else (0, 1)
                elif self.caption_col is None:
                    self.caption_col = 1 - int(self.image_col)
                self.image_col, self.caption_col = int(self.image_col), int(self.caption_col)
                lookup = lambda cells, col: cells[int(col)]  # noqa: E731
                start_rows = [] if header_like else [first]
            line = 1 if start_rows else 2
            for cells in [*start_rows, *reader]:
                if not any(c.strip() for c in cells):
                    line += 1
                    continue
                row = self._row(lambda c: lookup(cells, c), f"{self.path.name}:{line}", log)
                line += 1
                if row is not None:
                    yield row


class VisualGenomeSource(GroupedPairsSource):
    """Visual Genome ``region_descriptions.json`` (one row per image, region phrases as captions)."""

    format = "pairs-vg"

    def __init__(self, path: str | Path, images: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = Path(path)
        self.images = Path(images)
        if not self.images.is_dir():
            raise DataError(f"{self.images}: image folder not found")

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "path": str(self.path), "images": str(self.images)}

    def _image(self, image_id: Any) -> str:
        for sub in ("VG_100K", "VG_100K_2", ""):
            candidate = self.images / sub / f"{image_id}.jpg"
            if candidate.exists():
                return str(candidate)
        return str(self.images / "VG_100K" / f"{image_id}.jpg")

    def rows(self, log: SkipLog) -> Iterator[_Row]:
        data = load_json(self.path, "Visual Genome region_descriptions.json")
        if not isinstance(data, list):
            raise DataError(f"{self.path}: expected a list of images with 'regions'")
        for index, item in enumerate(data):
            where = f"{self.path.name}[{index}]"
            regions = item.get("regions") if isinstance(item, dict) else None
            if not isinstance(regions, list):
                log.add(self.split, where, "malformed entry: no 'regions' list")
                continue
            image_id = item.get("id", item.get("image_id"))
            if image_id is None and regions:
                image_id = regions[0].get("image_id")
            try:
                captions = as_captions([r.get("phrase") for r in regions if isinstance(r, dict)])
            except Malformed as exc:
                log.add(self.split, where, str(exc))
                continue
            if image_id is None or not captions:
                log.add(self.split, where, "empty caption" if image_id is not None else "malformed entry: no image id")
                continue
            yield _Row(str(image_id), self._image(image_id), captions, None, self.split, f"{where} (id {image_id})")


class HfPairsSource(GroupedPairsSource):
    """A ``datasets`` Dataset / DatasetDict saved with ``save_to_disk``: an image column + a caption column."""

    format = "pairs-hf"

    def __init__(self, path: str | Path, *, images: str | Path | None = None, image_col: str | None = None,
                 caption_col: str | None = None, id_col: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from datasets import DatasetDict, load_from_disk

        self.path = Path(path)
        try:
            loaded = load_from_disk(str(self.path))
        except Exception as exc:
            raise DataError(f"{self.path}: not a dataset saved with save_to_disk ({exc})") from exc
        self.parts = dict(loaded) if isinstance(loaded, DatasetDict) else {self.split: loaded}
        self.images = Path(images) if images is not None else self.path
        first = next(iter(self.parts.values()))
        self.image_col = pick_column(first.column_names, image_col, IMAGE_COLUMNS, "image", str(self.path))
        self.caption_col = pick_column(first.column_names, caption_col, CAPTION_COLUMNS, "caption", str(self.path))
        self.id_col = id_col
        for col in (id_col, self.label_col):
            if col is not None:
                pick_column(first.column_names, col, (), "id/label", str(self.path))
        self.group = self.group and id_col is not None

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "path": str(self.path), "image_col": self.image_col,
                "caption_col": self.caption_col, "id_col": self.id_col, "label_col": self.label_col}

    def estimate(self) -> int:
        return sum(len(d) for d in self.parts.values())

    def rows(self, log: SkipLog) -> Iterator[_Row]:
        from datasets import ClassLabel, Image

        for split, ds in self.parts.items():
            feature = ds.features[self.image_col]
            if isinstance(feature, Image):
                ds = ds.cast_column(self.image_col, Image(decode=False))
            label_feature = ds.features.get(self.label_col) if self.label_col else None
            for index, item in enumerate(ds):
                where = f"{self.path.name}/{split}[{index}]"
                value = item[self.image_col]
                if isinstance(value, dict):
                    image = value.get("bytes") or (str(self.images / value["path"]) if value.get("path") else None)
                elif isinstance(value, (bytes, str)) and value:
                    image = value if isinstance(value, bytes) else str(self.images / value)
                else:
                    image = None
                try:
                    captions = as_captions(item[self.caption_col])
                except Malformed as exc:
                    log.add(split, where, str(exc))
                    continue
                if image is None:
                    log.add(split, where, "malformed row: no image")
                    continue
                if not captions and not self.with_label:
                    log.add(split, where, "empty caption")
                    continue
                label = item[self.label_col] if self.label_col else None
                if isinstance(label_feature, ClassLabel):
                    label = label_feature.int2str(label)
                key = str(item[self.id_col]) if self.id_col else f"{split}-{index}"
                yield _Row(key, image, captions or [""], label, split, where)
