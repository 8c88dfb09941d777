"""The index of a collection to search: a folder of images or the lines of a caption file, with the dual-encoder
embedding of every entry, stored beside it and kept up to date incrementally (queries: :mod:`.search`).

The index of ``FOLDER`` is the folder ``FOLDER/.vlmo_index/`` (of a caption file ``DIR/caps.txt``:
``DIR/.caps.txt.vlmo_index/``; with ``cache_dir``: ``cache_dir/<name>-<hash of the path>/`` for read-only places):

- ``manifest.json``: the entries (image path relative to the folder, or line number; SHA-256 of the content;
  modification time and size; a stable int64 id), the unreadable files, the model fingerprint, the ANN parameters
  and the recall@10 measured when the approximate index was built;
- ``embeddings.safetensors``: one L2-normalised embedding per entry (``embeddings``) and its id (``ids``);
- ``ann.faiss``: the approximate index (IVF-PQ or HNSW), absent for exact search (built in memory from the
  embeddings).

An update hashes only files whose time or size changed, re-uses the embedding of any content seen before (a moved,
copied or touched file costs no forward pass), embeds the rest, removes deleted entries from the ANN index and adds
new ones; an IVF-PQ index is re-trained when the collection has changed size a lot, an HNSW graph is rebuilt when
entries were removed. Unreadable files are remembered and not retried until they change. Another model (weights
path, size, time, resolution) rebuilds everything, since embeddings of two models are not comparable.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError
from ..factory import InferenceModel
from ..layout import IMAGE_SUFFIXES
from ..outputs import atomic_file
from .ann import AnnIndex, AnnParams, plan, recall_at_k, resolve_kind, to_gpu_if_available
from .embed import embed_image_files, encode_texts, read_text_lines

if TYPE_CHECKING:
    import torch

INDEX_NAME = ".vlmo_index"
INDEX_FORMAT = "vlmo-search-index/2"
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.safetensors"
ANN_FILE = "ann.faiss"


@dataclass(frozen=True)
class FileStamp:
    """An entry: image path relative to the folder (POSIX) or caption line number, modification time (ns), size in
    bytes, SHA-256 of the content (empty until hashed)."""

    path: str
    mtime_ns: int
    size: int
    sha256: str = ""

    def same_file(self, other: FileStamp) -> bool:
        return (self.path, self.mtime_ns, self.size) == (other.path, other.mtime_ns, other.size)


@dataclass
class ImageIndex:
    """Embeddings of the readable entries of ``folder`` (row ``i`` is ``entries[i]``, FAISS id ``ids[i]``), their
    ANN index, and the unreadable files. ``kind`` is ``image`` (a folder) or ``text`` (a caption file)."""

    folder: Path
    file: Path
    fingerprint: str
    entries: list[FileStamp]
    embeddings: torch.Tensor
    unreadable: dict[FileStamp, str] = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)
    ann: AnnIndex | None = None
    ann_mode: str = "auto"
    recall_at_10: float | None = None
    kind: str = "image"
    texts: list[str] | None = None
    next_id: int = 0
    _row_of: dict[int, int] | None = field(default=None, repr=False, compare=False)
    _searchers: dict[str, AnnIndex] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.entries)

    def path_of(self, row: int) -> Path:
        return self.folder / self.entries[row].path

    def text_of(self, row: int) -> str:
        assert self.texts is not None, "an image index has no texts"
        return self.texts[row]

    def row_of_id(self) -> dict[int, int]:
        """FAISS id -> row (computed once: an index object never changes its entries)."""
        if self._row_of is None:
            self._row_of = {label: row for row, label in enumerate(self.ids)}
        return self._row_of

    def searcher(self, device=None) -> AnnIndex:
        """The ANN index to query: a GPU copy when FAISS has GPU support and ``device`` is CUDA, else itself."""
        key = str(device)
        if key not in self._searchers:
            self._searchers[key] = to_gpu_if_available(self.ann, device)
        return self._searchers[key]

    def describe_ann(self) -> str:
        if self.ann is None:
            return "no search index"
        text = self.ann.params.describe()
        if self.recall_at_10 is not None and self.ann.params.kind != "flat":
            text += f", recall@10 {self.recall_at_10:.3f} vs exact"
        return text


@dataclass(frozen=True)
class UpdateStats:
    """What :func:`update_index` did. ``embedded`` counts forward passes; ``reused`` entries whose content was
    already indexed under another path or time; ``recall_at_10`` is set when the ANN index was (re)built."""

    added: int
    changed: int
    removed: int
    kept: int
    unreadable: int
    rebuilt: bool
    seconds: float
    embedded: int = 0
    reused: int = 0
    ann_built: bool = False
    recall_at_10: float | None = None


# ---------------------------------------------------------------------------------------------------- files
def index_file(source: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where the index of ``source`` (an image folder or a caption file) is kept."""
    source = Path(source)
    if cache_dir is None:
        return source / INDEX_NAME if source.is_dir() else source.parent / f".{source.name}{INDEX_NAME}"
    digest = hashlib.sha1(str(source.resolve()).encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir) / f"{source.resolve().name}-{digest}"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def scan_folder(folder: str | Path) -> list[FileStamp]:
    """The image files under ``folder`` (recursively, hidden files and folders skipped), sorted by path; not hashed."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder to index")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            full = Path(dirpath) / name
            stat = full.stat()
            found.append(FileStamp(full.relative_to(root).as_posix(), stat.st_mtime_ns, stat.st_size))
    return sorted(found, key=lambda s: s.path)


def _write_atomic(target: Path, write: Callable[[str], None]) -> None:
    with atomic_file(target) as temp:
        write(str(temp))


def save_index(index: ImageIndex) -> Path:
    """Write embeddings, the ANN index (approximate kinds) and, last, the manifest, each atomically."""
    import torch
    from safetensors.torch import save_file

    index.file.mkdir(parents=True, exist_ok=True)
    tensors = {"embeddings": index.embeddings.float().contiguous(), "ids": torch.tensor(index.ids, dtype=torch.int64)}
    _write_atomic(index.file / EMBEDDINGS, lambda temp: save_file(tensors, temp))
    ann_path = index.file / ANN_FILE
    if index.ann is not None and index.ann.params.kind != "flat":
        index.ann.save(ann_path)
    else:
        ann_path.unlink(missing_ok=True)
    manifest = {
        "format": INDEX_FORMAT,
        "kind": index.kind,
        "source": str(index.folder.resolve()),
        "fingerprint": index.fingerprint,
        "count": len(index.entries),
        "entries": [[e.path, e.sha256, e.mtime_ns, e.size, i] for e, i in zip(index.entries, index.ids)],
        "unreadable": [[e.path, e.sha256, e.mtime_ns, e.size, why] for e, why in index.unreadable.items()],
        "texts": index.texts,
        "next_id": index.next_id,
        "ann_mode": index.ann_mode,
        "ann": index.ann.params.as_dict() if index.ann is not None else None,
        "recall_at_10": index.recall_at_10,
    }
    text = json.dumps(manifest, ensure_ascii=False)
    _write_atomic(index.file / MANIFEST, lambda temp: Path(temp).write_text(text, encoding="utf-8"))
    return index.file


def load_index(source: str | Path, cache_dir: str | Path | None = None) -> ImageIndex | None:
    """The stored index of ``source``, or ``None`` when there is none or it cannot be read (it is then rebuilt).
    A missing or inconsistent ANN file only costs rebuilding the ANN index (``ann`` is then ``None``)."""
    from safetensors.torch import load_file

    where = index_file(source, cache_dir)
    try:
        meta = json.loads((where / MANIFEST).read_text(encoding="utf-8"))
        if meta.get("format") != INDEX_FORMAT:
            return None
        tensors = load_file(str(where / EMBEDDINGS))
        embeddings, ids = tensors["embeddings"], tensors["ids"].tolist()
        entries = [FileStamp(p, m, s, h) for p, h, m, s, _ in meta["entries"]]
        unreadable = {FileStamp(p, m, s, h): why for p, h, m, s, why in meta["unreadable"]}
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
        return None
    if embeddings.ndim != 2 or embeddings.shape[0] != len(entries) or ids != [e[4] for e in meta["entries"]]:
        return None
    index = ImageIndex(Path(source), where, meta.get("fingerprint", ""), entries, embeddings, unreadable, ids,
                       ann_mode=meta.get("ann_mode", "auto"), recall_at_10=meta.get("recall_at_10"),
                       kind=meta.get("kind", "image"), texts=meta.get("texts"), next_id=int(meta.get("next_id", 0)))
    params = AnnParams(**meta["ann"]) if meta.get("ann") else None
    if params is not None and params.kind == "flat":
        index.ann = AnnIndex.build(params, embeddings, ids)
    elif params is not None:
        ann = AnnIndex.load(params, where / ANN_FILE)
        index.ann = ann if ann is not None and len(ann) == len(entries) else None
    return index


# ---------------------------------------------------------------------------------------------------- updating
@dataclass
class _Plan:
    """How each current entry gets its vector: kept (old row), reused (old row of equal content), or embedded."""

    entries: list[FileStamp]
    old_rows: dict[int, int]  # position in entries -> row of the old index
    todo: list[int]  # positions in entries to embed (first of each distinct content)
    unreadable: dict[FileStamp, str]
    added: int = 0
    changed: int = 0
    kept: int = 0
    removed: int = 0
    reused: int = 0


def _plan_update(old: ImageIndex | None, current: list[FileStamp], hash_of: Callable[[FileStamp], str]) -> _Plan:
    """Compare ``current`` with ``old``: hash what changed, find content already embedded, list what to embed."""
    by_path: dict[str, tuple[FileStamp, int | None]] = {}
    by_sha: dict[str, int] = {}
    if old is not None:
        by_path = {e.path: (e, row) for row, e in enumerate(old.entries)}
        by_path.update({e.path: (e, None) for e in old.unreadable})
        by_sha = {e.sha256: row for row, e in enumerate(old.entries)}
    out = _Plan([], {}, [], {})
    pending: dict[str, int] = {}
    for stamp in current:
        previous = by_path.get(stamp.path)
        same = previous is not None and previous[0].same_file(stamp) and previous[0].sha256
        if not stamp.sha256:
            stamp = replace(stamp, sha256=previous[0].sha256 if same else hash_of(stamp))
        if previous is not None and previous[1] is None and previous[0].sha256 == stamp.sha256:
            out.unreadable[stamp] = old.unreadable[previous[0]]  # type: ignore[union-attr]
            continue
        position = len(out.entries)
        out.entries.append(stamp)
        if previous is not None and previous[1] is not None and previous[0].sha256 == stamp.sha256:
            out.kept += 1
            out.old_rows[position] = previous[1]
            continue
        if previous is None:
            out.added += 1
        else:
            out.changed += 1
        if stamp.sha256 in by_sha:
            out.reused += 1
            out.old_rows[position] = by_sha[stamp.sha256]
        elif stamp.sha256 in pending:
            out.reused += 1
        else:
            pending[stamp.sha256] = position
            out.todo.append(position)
    present = {s.path for s in current}
    out.removed = sum(1 for path in by_path if path not in present)
    return out


def _fill_vectors(plan_: _Plan, old: ImageIndex | None, fresh: dict[int, torch.Tensor], dim: int):
    """The embeddings of the planned entries (unreadable new files dropped): ``(entries, [N, D] tensor)``."""
    import torch

    first_of_sha = {plan_.entries[p].sha256: p for p in plan_.todo}
    entries, rows = [], []
    for position, stamp in enumerate(plan_.entries):
        if position in plan_.old_rows:
            rows.append(old.embeddings[plan_.old_rows[position]])  # type: ignore[union-attr]
        elif first_of_sha.get(stamp.sha256) in fresh:
            rows.append(fresh[first_of_sha[stamp.sha256]])
        else:
            continue
        entries.append(stamp)
    embeddings = torch.stack(rows) if rows else torch.zeros(0, dim)
    return entries, embeddings


def _assign_ids(old: ImageIndex | None, plan_entries: list[FileStamp]) -> tuple[list[int], int]:
    """Stable ids: an entry that kept its path and content keeps its id; every other entry gets a new one."""
    next_id = 0 if old is None else old.next_id
    old_id_of: dict[str, tuple[str, int]] = {}
    if old is not None:
        old_id_of = {e.path: (e.sha256, i) for e, i in zip(old.entries, old.ids)}
    ids = []
    for stamp in plan_entries:
        known = old_id_of.get(stamp.path)
        if known is not None and known[0] == stamp.sha256:
            ids.append(known[1])
        else:
            ids.append(next_id)
            next_id += 1
    return ids, next_id


def _maintain_ann(index: ImageIndex, old: ImageIndex | None, mode: str) -> tuple[bool, float | None]:
    """Bring ``index.ann`` in line with the entries: incremental add/remove when possible, else a (re)build, with
    recall@10 against exact search measured for approximate kinds. Returns ``(built, recall or None)``."""
    kind = resolve_kind(mode, len(index))
    previous = old.ann if old is not None else None
    if kind == "flat" and previous is not None and previous.params.kind == "flat" and old.ids == index.ids:
        index.ann, index.recall_at_10 = previous, 1.0  # the same vectors: the in-memory exact index still fits
        return False, None
    current_ids = set(index.ids)
    reusable = (previous is not None and previous.params.kind == kind and kind != "flat"
                and not previous.needs_retraining(len(index)) and len(index) > 0)
    if reusable:
        assert old is not None and previous is not None
        gone = [i for i in old.ids if i not in current_ids]
        if gone and not previous.supports_removal():
            reusable = False
        else:
            known = set(old.ids)
            new_rows = [row for row, i in enumerate(index.ids) if i not in known]
            previous.remove(gone)
            previous.add(index.embeddings[new_rows], [index.ids[r] for r in new_rows])
            index.ann, index.recall_at_10 = previous, old.recall_at_10
            return False, None
    params = plan(kind, len(index), index.embeddings.shape[1])
    index.ann = AnnIndex.build(params, index.embeddings, index.ids)
    if kind == "flat":  # exact: rebuilt in memory on every load, nothing to measure
        index.recall_at_10 = 1.0
        return previous is None or previous.params.kind != "flat", None
    index.recall_at_10 = recall_at_k(index.ann, index.embeddings, index.ids, k=10)
    return True, index.recall_at_10


def _ann_changed(old: ImageIndex | None, new: ImageIndex) -> bool:
    """Whether the stored index description differs (mode, kind or parameters): the manifest must be rewritten."""
    if old is None or old.ann_mode != new.ann_mode or (old.ann is None) != (new.ann is None):
        return True
    return old.ann is not None and new.ann is not None and old.ann.params != new.ann.params


def _sync(model: InferenceModel, source: Path, cache_dir, ann: str | None, kind: str, current: list[FileStamp],
          hash_of: Callable[[FileStamp], str], embed_positions: Callable[[list[FileStamp]], tuple[dict, dict]],
          texts_of: Callable[[list[FileStamp]], list[str] | None]) -> tuple[ImageIndex, UpdateStats]:
    """The update shared by image folders and caption files (see the module docstring)."""
    t0 = time.perf_counter()
    fingerprint = model.fingerprint()
    old = load_index(source, cache_dir)
    if old is not None and old.kind != kind:
        old = None
    rebuilt = old is None or old.fingerprint != fingerprint
    base = None if rebuilt else old
    plan_ = _plan_update(base, current, hash_of)
    fresh, failed = embed_positions([plan_.entries[p] for p in plan_.todo])
    fresh = {plan_.todo[i]: vec for i, vec in fresh.items()}
    unreadable = {**plan_.unreadable, **{plan_.entries[plan_.todo[i]]: why for i, why in failed.items()}}
    entries, embeddings = _fill_vectors(plan_, base, fresh, model.model.config.embed_dim)
    ids, next_id = _assign_ids(base, entries)
    mode = ann or (base.ann_mode if base is not None else "auto")
    index = ImageIndex(source, index_file(source, cache_dir), fingerprint, entries, embeddings, unreadable, ids,
                       ann_mode=mode, kind=kind, texts=texts_of(entries), next_id=next_id)
    structural = base is None or bool(plan_.todo or plan_.removed or plan_.added or plan_.changed) \
        or entries != base.entries
    ann_built, recall = _maintain_ann(index, base, mode) if len(index) else (False, None)
    if structural or _ann_changed(base, index) or base.unreadable != unreadable:
        save_index(index)
    stats = UpdateStats(added=plan_.added, changed=plan_.changed, removed=plan_.removed, kept=plan_.kept,
                        unreadable=len(unreadable), rebuilt=rebuilt, seconds=time.perf_counter() - t0,
                        embedded=len(plan_.todo) - len(failed), reused=plan_.reused, ann_built=ann_built,
                        recall_at_10=recall)
    return index, stats


def update_index(model: InferenceModel, folder: str | Path, *, cache_dir: str | Path | None = None,
                 batch_size: int = 64, ann: str | None = None) -> tuple[ImageIndex, UpdateStats]:
    """Bring the index of the image ``folder`` up to date (see the module docstring); saves it if changed.

    Args:
        ann: ``auto``, ``flat``, ``ivfpq`` or ``hnsw``; ``None`` keeps the stored index's choice (``auto`` at first).
    """
    folder = Path(folder)
    current = scan_folder(folder)
    if not current:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) to index")

    def embed_stamps(stamps: list[FileStamp]) -> tuple[dict, dict]:
        if not stamps:
            return {}, {}
        found = embed_image_files(model, [folder / s.path for s in stamps], batch_size=batch_size)
        position = {str(folder / s.path): i for i, s in enumerate(stamps)}
        vectors = {position[item]: found.embeddings[row] for row, item in enumerate(found.ids)}
        return vectors, {position[item["id"]]: item["reason"] for item in found.skipped}

    return _sync(model, folder, cache_dir, ann, "image", current, lambda s: file_sha256(folder / s.path),
                 embed_stamps, lambda entries: None)


def update_caption_index(model: InferenceModel, captions: str | Path, *, cache_dir: str | Path | None = None,
                         batch_size: int = 256, ann: str | None = None) -> tuple[ImageIndex, UpdateStats]:
    """The index of the non-empty lines of a UTF-8 caption file (one caption a line), for image → text search;
    lines are keyed by their number and the hash of their text (an edited line is re-embedded, a moved one not)."""
    captions = Path(captions)
    lines = read_text_lines(captions)
    if not lines:
        raise DataError(f"{captions}: no non-empty lines to index")
    text_of = {str(n): t for n, t in lines}
    current = [FileStamp(str(n), 0, len(t.encode("utf-8")), text_sha256(t)) for n, t in lines]

    def embed_stamps(stamps: list[FileStamp]) -> tuple[dict, dict]:
        if not stamps:
            return {}, {}
        vectors = encode_texts(model, [text_of[s.path] for s in stamps], batch_size=batch_size)
        return dict(enumerate(vectors)), {}

    return _sync(model, captions, cache_dir, ann, "text", current, lambda s: s.sha256, embed_stamps,
                 lambda entries: [text_of[e.path] for e in entries])
