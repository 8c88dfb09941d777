"""The prepared dataset directory: its layout, its manifest, writing it atomically and opening it.

Layout (schema version 1)::

    DIR/
      manifest.json          source, kind, splits and their sizes, counts, tokenizer, every skipped sample
      data/                  a ``datasets.DatasetDict`` saved with ``save_to_disk`` (``datasets.load_from_disk(DIR/"data")``)
        dataset_dict.json
        <split>/             Arrow shards, memory-mapped when read
      image_table/<split>/   only for kind ``vqa``: one row per image (``image``, ``image_id``); question rows point
                             into it with ``image_row`` so an image shared by many questions is stored once
      answers.json           kind ``vqa``: the answer vocabulary, a list (index -> answer)
      labels.json            pairs with a label column: the class names, a list (index -> name)
      tokenizer/             optional: ``tokenizer.json`` (+ ``vocab.txt``) the data was prepared with

Row schemas per kind (image columns are ``datasets.Image()``: encoded bytes):

- ``pairs``  : ``image``, ``image_id`` (str), ``captions`` (list[str]), ``split`` (source split name);
               optional ``label`` (int) for classification; optional ``group`` (str or null): rows with the same
               group show the same thing (a duplicate group: one scene, one near-duplicate image), never each
               other's ITM hard negatives under ``itm_exclude_same_group``.
- ``vqa``    : ``image_row`` (int), ``image_id`` (str), ``question``, ``question_id`` (int), ``answers`` (list[str], the
               raw annotator answers), ``labels`` (list[int]), ``scores`` (list[float]), ``answer_type``,
               ``question_type``.
- ``nlvr2``  : ``image_0``, ``image_1``, ``sentence``, ``label`` (0/1), ``identifier``.
- ``images`` : ``image``, ``image_id``.
- ``text``   : ``text``.

A directory is written under a temporary name and renamed when complete, so a directory with a ``manifest.json`` is
always finished; an interrupted run leaves only a ``.DIR.tmp-PID@HOST.*`` folder behind, removed by the next prepare
of ``DIR``. What an existing ``DIR`` may be replaced with follows :mod:`vlmo_cli.outputs` (only a previous prepared
dataset, only with ``--overwrite``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..outputs import DirectoryOutput, DirKind, check_directory

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("pairs", "vqa", "nlvr2", "images", "text")
PREPARED = DirKind("vlmo prepare",
                   frozenset({MANIFEST, "data", "image_table", "answers.json", "labels.json", "tokenizer"}), MANIFEST)


def kind_features(kind: str, *, with_label: bool = False, with_group: bool = False):
    """The ``datasets.Features`` of a row of ``kind`` (see the module docstring)."""
    from datasets import Features, Image, List, Value

    if kind == "pairs":
        cols = {"image": Image(), "image_id": Value("string"), "captions": List(Value("string")), "split": Value("string")}
        if with_label:
            cols["label"] = Value("int64")
        if with_group:
            cols["group"] = Value("string")
        return Features(cols)
    if kind == "vqa":
        return Features(
            {
                "image_row": Value("int64"),
                "image_id": Value("string"),
                "question": Value("string"),
                "question_id": Value("int64"),
                "answers": List(Value("string")),
                "labels": List(Value("int64")),
                "scores": List(Value("float32")),
                "answer_type": Value("string"),
                "question_type": Value("string"),
            }
        )
    if kind == "nlvr2":
        return Features(
            {
                "image_0": Image(),
                "image_1": Image(),
                "sentence": Value("string"),
                "label": Value("int64"),
                "identifier": Value("string"),
            }
        )
    if kind == "images":
        return Features({"image": Image(), "image_id": Value("string")})
    if kind == "text":
        return Features({"text": Value("string")})
    raise DataError(f"unknown dataset kind {kind!r}; allowed: {list(KINDS)}")


def image_table_features():
    from datasets import Features, Image, Value

    return Features({"image": Image(), "image_id": Value("string")})


# ---------------------------------------------------------------------------------------------------- writing
def check_output(out: Path, overwrite: bool, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse an output that is not a previous prepared dataset (or one without ``overwrite``); see
    :func:`vlmo_cli.outputs.check_directory`."""
    return check_directory(out, PREPARED, overwrite=overwrite, inputs=inputs)


class StoreWriter:
    """Streams rows into per-split Arrow files under a temporary folder, then publishes the directory."""

    def __init__(self, out: Path, kind: str, features, *, image_table: bool = False, overwrite: bool = False,
                 inputs: Iterable[str | Path] = ()) -> None:
        self.out = Path(out)
        self.kind = kind
        self.features = features
        self.table_features = image_table_features() if image_table else None
        self.output = DirectoryOutput(self.out, PREPARED, overwrite=overwrite, inputs=inputs)
        self.tmp = self.output.open()
        (self.tmp / "_raw").mkdir()
        self._writers: dict[tuple[str, str], Any] = {}
        self.sizes: dict[str, int] = {}
        self.table_sizes: dict[str, int] = {}

    def _writer(self, group: str, split: str):
        from datasets.arrow_writer import ArrowWriter

        key = (group, split)
        if key not in self._writers:
            feats = self.features if group == "data" else self.table_features
            path = self.tmp / "_raw" / f"{group}-{_safe(split)}.arrow"
            self._writers[key] = ArrowWriter(features=feats, path=str(path), writer_batch_size=256)
        return self._writers[key]

    def write(self, split: str, row: dict[str, Any]) -> None:
        self._writer("data", split).write(self.features.encode_example(row))
        self.sizes[split] = self.sizes.get(split, 0) + 1

    def write_image(self, split: str, row: dict[str, Any]) -> int:
        """Append to the split's image table; returns the row index."""
        self._writer("image_table", split).write(self.table_features.encode_example(row))
        index = self.table_sizes.get(split, 0)
        self.table_sizes[split] = index + 1
        return index

    def abort(self) -> None:
        for writer in self._writers.values():
            try:
                writer.finalize()
            except Exception:  # nothing to keep anyway
                pass
        self.output.abort()

    def publish(self, manifest: dict[str, Any], extra_files: dict[str, Any]) -> Path:
        """Finish the Arrow files, save them in ``datasets`` layout, write the manifest and rename into place."""
        import datasets

        for writer in self._writers.values():
            writer.finalize()
        was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # our own progress bar already covered the work
        try:
            self._save_splits()
        finally:
            if was_enabled:
                datasets.enable_progress_bars()
        for name, content in extra_files.items():
            target = self.tmp / name
            if callable(content):  # a writer, e.g. TextTokenizer.save
                content(target)
            elif isinstance(content, Path):
                if content.is_dir():
                    shutil.copytree(content, target)
                else:
                    shutil.copy2(content, target)
            else:
                target.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n")
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        self.output.commit()
        return self.out

    def _save_splits(self) -> None:
        from datasets import Dataset

        for group, sizes in (("data", self.sizes), ("image_table", self.table_sizes)):
            if not sizes:
                continue
            for split in sizes:
                raw = self.tmp / "_raw" / f"{group}-{_safe(split)}.arrow"
                ds = Dataset.from_file(str(raw))
                ds.save_to_disk(str(self.tmp / group / split))
                del ds
            (self.tmp / group / "dataset_dict.json").write_text(json.dumps({"splits": list(sizes)}) + "\n")
        shutil.rmtree(self.tmp / "_raw")


def _safe(split: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in split)


# ---------------------------------------------------------------------------------------------------- reading
@dataclass
class PreparedDataset:
    """An opened prepared directory. Splits are memory-mapped ``datasets.Dataset`` objects with undecoded images."""

    root: Path
    manifest: dict[str, Any]
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def _load(self, group: str, split: str):
        from datasets import Image, load_from_disk

        key = f"{group}/{split}"
        if key not in self._cache:
            path = self.root / group / split
            if not path.is_dir():
                raise DataError(f"{self.root}: no split {split!r}; available: {self.splits}")
            try:
                ds = load_from_disk(str(path))
            except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise self._damaged(path, exc) from exc
            for name, feat in ds.features.items():
                if isinstance(feat, Image):
                    ds = ds.cast_column(name, Image(decode=False))
            self._cache[key] = ds
        return self._cache[key]

    def _damaged(self, folder: Path, exc: Exception) -> DataError:
        """The error for a split folder whose Arrow data cannot be read: which file, and how to re-create it."""
        bad = next((f for f in sorted(folder.glob("*.arrow")) if not _arrow_readable(f)), None)
        what = bad.relative_to(self.root) if bad is not None else folder.relative_to(self.root)
        source = self.manifest.get("source", {}).get("format", "?")
        return DataError(f"{self.root}: {what} is damaged ({type(exc).__name__}: {exc}); re-create the directory by "
                         f"running the `vlmo prepare` command that made it (source {source!r}) again with --overwrite")

    def split(self, name: str):
        """Rows of split ``name``; ``"train+restval"`` concatenates splits."""
        parts = [p for p in name.split("+") if p]
        if len(parts) == 1:
            return self._load("data", parts[0])
        from datasets import concatenate_datasets

        return concatenate_datasets([self._load("data", p) for p in parts])

    def image_table(self, name: str):
        """VQA image rows; ``image_row`` of question rows indexes into it (per split, concatenated like :meth:`split`)."""
        parts = [p for p in name.split("+") if p]
        if len(parts) == 1:
            return self._load("image_table", parts[0])
        from datasets import concatenate_datasets

        return concatenate_datasets([self._load("image_table", p) for p in parts])

    def image_row_offsets(self, name: str) -> list[int]:
        """Offset to add to ``image_row`` for each part of a ``a+b`` split name (parts are concatenated in order)."""
        offsets, total = [], 0
        for part in [p for p in name.split("+") if p]:
            offsets.append(total)
            total += self.manifest.get("image_table", {}).get(part, 0)
        return offsets

    def texts(self, split: str | None = None):
        """Every text of the dataset (captions, texts, questions or sentences), split by split."""
        column = {"pairs": "captions", "text": "text", "vqa": "question", "nlvr2": "sentence"}.get(self.kind)
        if column is None:
            return
        for name in [split] if split else self.splits:
            for batch in self.split(name).select_columns([column]).iter(batch_size=1024):
                for value in batch[column]:
                    yield from (value if isinstance(value, list) else [value])

    @property
    def answers(self) -> list[str]:
        return self._json("answers.json", "the VQA answer vocabulary")

    @property
    def label_names(self) -> list[str]:
        return self._json("labels.json", "the class names of a labelled pairs dataset")

    @property
    def tokenizer_path(self) -> Path | None:
        path = self.root / "tokenizer"
        return path if path.is_dir() else None

    def _json(self, name: str, what: str) -> Any:
        key = f"json/{name}"
        if key not in self._cache:
            path = self.root / name
            if not path.exists():
                raise DataError(f"{self.root}: {name} missing ({what}); is this a {self.kind!r} dataset?")
            self._cache[key] = json.loads(path.read_text())
        return self._cache[key]


def _arrow_readable(path: Path) -> bool:
    """Whether an Arrow stream file (the format ``datasets`` saves) reads to its end."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            pa.ipc.open_stream(source).read_all()
    except (OSError, pa.ArrowException):
        return False
    return True


def open_prepared(path: str | Path, kind: str | tuple[str, ...] | None = None) -> PreparedDataset:
    """Open a prepared directory, checking its manifest (and its kind when given)."""
    root = Path(path)
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        hint = " (an interrupted prepare?)" if root.exists() else ""
        raise DataError(f"{root}: not a prepared dataset, {MANIFEST} missing{hint}; run `vlmo prepare ... --out {root}`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(f"{manifest_path}: schema_version {version} is not supported (expected {SCHEMA_VERSION})")
    if kind is not None:
        allowed = (kind,) if isinstance(kind, str) else kind
        if manifest.get("kind") not in allowed:
            raise DataError(f"{root}: dataset kind is {manifest.get('kind')!r}, this needs one of {list(allowed)}")
    return PreparedDataset(root, manifest)
