"""Search a folder of images with text (or an image): a cached embedding index plus top-K ranking, optionally
re-ranked with the fusion encoder's ITM head.

The index of ``FOLDER`` lives in ``FOLDER/.vlmo_index.safetensors`` (or, with ``cache_dir``, in
``cache_dir/<hash of the folder path>.safetensors`` for read-only folders). It stores one L2-normalised embedding
per image and, in its metadata, each image's relative path, modification time (ns) and size. Updating re-embeds
only images that are new or whose time or size changed, drops deleted ones and remembers unreadable files (so they
are not retried until they change). The index also records which weights (path, size, time) and resolution made
it: another model rebuilds it from scratch, since embeddings of two models are not comparable.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .embed import IMAGE_SUFFIXES, InferenceModel, embed_image_files, encode_texts
from .errors import DataError, VlmoError

if TYPE_CHECKING:
    import torch

INDEX_NAME = ".vlmo_index.safetensors"
INDEX_FORMAT = "vlmo-image-index/1"


@dataclass(frozen=True)
class FileStamp:
    """An image of the folder: path relative to the folder (POSIX), modification time in ns, size in bytes."""

    path: str
    mtime_ns: int
    size: int


@dataclass
class ImageIndex:
    """Embeddings of the readable images of ``folder`` (row ``i`` is ``entries[i]``) plus the unreadable ones."""

    folder: Path
    file: Path
    fingerprint: str
    entries: list[FileStamp]
    embeddings: torch.Tensor
    unreadable: dict[FileStamp, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def path_of(self, row: int) -> Path:
        return self.folder / self.entries[row].path


@dataclass(frozen=True)
class UpdateStats:
    """What :func:`update_index` did."""

    added: int
    changed: int
    removed: int
    kept: int
    unreadable: int
    rebuilt: bool
    seconds: float

    @property
    def embedded(self) -> int:
        return self.added + self.changed


@dataclass(frozen=True)
class Hit:
    """One search result. ``score`` orders the results: the cosine similarity, or ITM logit + cosine when
    re-ranked (``itm`` is then the ITM match logit)."""

    rank: int
    path: Path
    score: float
    similarity: float
    itm: float | None = None


def index_file(folder: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where the index of ``folder`` is kept."""
    folder = Path(folder)
    if cache_dir is None:
        return folder / INDEX_NAME
    digest = hashlib.sha1(str(folder.resolve()).encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir) / f"{folder.resolve().name}-{digest}.safetensors"


def scan_folder(folder: str | Path) -> list[FileStamp]:
    """The image files under ``folder`` (recursively, hidden files and folders skipped), sorted by path."""
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


def load_index(folder: str | Path, cache_dir: str | Path | None = None) -> ImageIndex | None:
    """The stored index of ``folder``, or ``None`` when there is none or it cannot be read (it is then rebuilt)."""
    from safetensors import safe_open

    path = index_file(folder, cache_dir)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != INDEX_FORMAT:
                return None
            embeddings = handle.get_tensor("embeddings")
        entries = [FileStamp(*e) for e in json.loads(meta["entries"])]
        unreadable = {FileStamp(*e[:3]): e[3] for e in json.loads(meta.get("unreadable", "[]"))}
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
        return None
    if embeddings.ndim != 2 or embeddings.shape[0] != len(entries):
        return None
    return ImageIndex(Path(folder), path, meta.get("fingerprint", ""), entries, embeddings, unreadable)


def save_index(index: ImageIndex) -> Path:
    """Write the index atomically (temporary file in the same folder, then rename)."""
    from safetensors.torch import save_file

    index.file.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": INDEX_FORMAT,
        "folder": str(index.folder.resolve()),
        "fingerprint": index.fingerprint,
        "entries": json.dumps([[e.path, e.mtime_ns, e.size] for e in index.entries], ensure_ascii=False),
        "unreadable": json.dumps([[e.path, e.mtime_ns, e.size, why] for e, why in index.unreadable.items()],
                                 ensure_ascii=False),
    }
    handle, temp = tempfile.mkstemp(prefix=f".{index.file.name}.", suffix=".tmp", dir=index.file.parent)
    os.close(handle)
    try:
        save_file({"embeddings": index.embeddings.float().contiguous()}, temp, metadata=meta)
        os.replace(temp, index.file)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return index.file


def update_index(
    model: InferenceModel, folder: str | Path, *, cache_dir: str | Path | None = None, batch_size: int = 64
) -> tuple[ImageIndex, UpdateStats]:
    """Bring the index of ``folder`` up to date with its images (see the module docstring); saves it if changed."""
    import torch

    t0 = time.perf_counter()
    folder = Path(folder)
    current = scan_folder(folder)
    if not current:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) to index")
    fingerprint = model.fingerprint()
    old = load_index(folder, cache_dir)
    rebuilt = old is None or old.fingerprint != fingerprint
    known: dict[str, tuple[FileStamp, int | None]] = {}
    if not rebuilt:
        assert old is not None
        known = {e.path: (e, row) for row, e in enumerate(old.entries)}
        known.update({e.path: (e, None) for e in old.unreadable})
    keep_rows: dict[str, int] = {}
    unreadable: dict[FileStamp, str] = {}
    todo: list[FileStamp] = []
    added = changed = 0
    for stamp in current:
        previous = known.get(stamp.path)
        if previous is not None and previous[0] == stamp:
            if previous[1] is None:
                unreadable[stamp] = old.unreadable[stamp]  # type: ignore[union-attr]
            else:
                keep_rows[stamp.path] = previous[1]
            continue
        todo.append(stamp)
        if previous is None:
            added += 1
        else:
            changed += 1
    present = {s.path for s in current}
    removed = 0 if rebuilt else sum(1 for path in known if path not in present)

    fresh = embed_image_files(model, [folder / s.path for s in todo], batch_size=batch_size) if todo else None
    fresh_rows: dict[str, int] = {}
    if fresh is not None:
        by_path = {str(folder / s.path): s for s in todo}
        fresh_rows = {by_path[i].path: row for row, i in enumerate(fresh.ids)}
        for item in fresh.skipped:
            unreadable[by_path[item["id"]]] = item["reason"]

    entries: list[FileStamp] = []
    rows: list[torch.Tensor] = []
    dim = model.model.config.embed_dim
    for stamp in current:
        if stamp.path in keep_rows:
            rows.append(old.embeddings[keep_rows[stamp.path]])  # type: ignore[union-attr]
        elif stamp.path in fresh_rows:
            rows.append(fresh.embeddings[fresh_rows[stamp.path]])  # type: ignore[union-attr]
        else:
            continue
        entries.append(stamp)
    embeddings = torch.stack(rows) if rows else torch.zeros(0, dim)
    index = ImageIndex(folder, index_file(folder, cache_dir), fingerprint, entries, embeddings, unreadable)
    if rebuilt or todo or removed:
        save_index(index)
    stats = UpdateStats(added=added, changed=changed, removed=removed, kept=len(keep_rows),
                        unreadable=len(unreadable), rebuilt=rebuilt, seconds=time.perf_counter() - t0)
    return index, stats


def _top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` by descending score, ties by ascending row (stable), as the retrieval metrics order them."""
    import torch

    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return scores[order], order


def require_itm(net, source: str | Path) -> None:
    """Raise a clear :class:`VlmoError` when ``net`` has no ITM head (re-ranking is then impossible)."""
    if getattr(net, "itm_score", None) is None:
        raise VlmoError(
            f"{source}: --rerank-k needs a model with an ITM head (a stage-3 pre-trained model, or retrieval "
            "fine-tuned with with_itm = true); this model has heads " + ", ".join(net.config.heads)
        )


def itm_rerank(model: InferenceModel, index: ImageIndex, text: str, rows: list[int], similarity: list[float],
               *, max_text_len: int | None = None, batch_size: int = 32) -> list[tuple[int, float, float]]:
    """``(row, itm_logit, itm_logit + similarity)`` of each candidate row, best first (the fusion encoder scores
    the pair [text, image]; the sum is the combination VLMo's and LAVIS's re-ranking use)."""
    import torch

    from .data.transforms import build_transform
    from .embed import _image_tensor

    net = model.model
    require_itm(net, model.path)
    tok = model.require_tokenizer()
    length = min(max_text_len or net.config.max_text_len, net.config.max_text_len)
    enc = tok.encode_batch([text], length, padding="longest")  # one query: no padding at all
    ids = torch.from_numpy(enc["input_ids"]).to(model.device)
    mask = torch.from_numpy(enc["attention_mask"]).to(model.device)
    transform = build_transform(model.image_size, False)
    logits: list[float] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            pixels = []
            for row in part:
                tensor, reason = _image_tensor(index.path_of(row), transform)
                if tensor is None:
                    raise DataError(f"{index.path_of(row)}: cannot be read for re-ranking ({reason})")
                pixels.append(tensor)
            batch = torch.stack(pixels).to(model.device)
            out = net.forward_pair(ids.expand(len(part), -1), mask.expand(len(part), -1), batch)
            logits += net.itm_logits(out.pooled).float()[:, 1].cpu().tolist()
    scored = [(row, itm, itm + sim) for row, itm, sim in zip(rows, logits, similarity)]
    return sorted(scored, key=lambda item: -item[2])  # sorted() is stable: equal totals keep the ITC order


def search_index(
    model: InferenceModel,
    index: ImageIndex,
    *,
    text: str | None = None,
    image: str | Path | None = None,
    top_k: int = 5,
    rerank_k: int = 0,
    max_text_len: int | None = None,
) -> list[Hit]:
    """The ``top_k`` images of ``index`` for a text or an image query (exactly one)."""
    import torch

    if (text is None) == (image is None):
        raise VlmoError("give exactly one query: a text or --image QUERY")
    if top_k < 1:
        raise VlmoError(f"--top-k must be >= 1, got {top_k}")
    if not len(index):
        raise DataError(f"{index.folder}: none of the images could be read; nothing to search")
    if text is not None:
        if not text.strip():
            raise VlmoError("the text query is empty")
        query = encode_texts(model, [text], max_text_len=max_text_len)[0]
    else:
        if rerank_k:
            raise VlmoError("--rerank-k re-scores (text, image) pairs with the ITM head; it needs a text query")
        found = embed_image_files(model, [Path(image)], batch_size=1)
        if not len(found):
            raise DataError(f"{image}: cannot read the query image ({found.skipped[0]['reason']})")
        query = found.embeddings[0]
    with torch.no_grad():
        scores = index.embeddings.float() @ query.float()
    k = max(top_k, rerank_k)
    values, rows = _top(scores, min(k, len(index)))
    rows_list, sims = rows.tolist(), values.tolist()
    if rerank_k and text is not None:
        head = min(rerank_k, len(rows_list))
        rescored = itm_rerank(model, index, text, rows_list[:head], sims[:head], max_text_len=max_text_len)
        sim_of = dict(zip(rows_list, sims))
        hits = [Hit(r + 1, index.path_of(row), total, sim_of[row], itm) for r, (row, itm, total) in enumerate(rescored)]
        hits += [Hit(len(hits) + j + 1, index.path_of(row), sim, sim) for j, (row, sim) in
                 enumerate(zip(rows_list[head:], sims[head:]))]
        return hits[:top_k]
    return [Hit(r + 1, index.path_of(row), sim, sim) for r, (row, sim) in enumerate(zip(rows_list, sims))][:top_k]


@dataclass
class SearchResult:
    hits: list[Hit]
    stats: UpdateStats
    index: ImageIndex


def search_folder(
    model: InferenceModel,
    folder: str | Path,
    text: str | None = None,
    *,
    image: str | Path | None = None,
    top_k: int = 5,
    rerank_k: int = 0,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
) -> SearchResult:
    """``vlmo search``: update the folder's index, then answer the query."""
    if rerank_k:
        require_itm(model.model, model.path)  # fail before embedding a whole folder
    if text is None and image is None:
        raise VlmoError("give exactly one query: a text or --image QUERY")
    index, stats = update_index(model, folder, cache_dir=cache_dir, batch_size=batch_size)
    hits = search_index(model, index, text=text, image=image, top_k=top_k, rerank_k=rerank_k)
    return SearchResult(hits, stats, index)
