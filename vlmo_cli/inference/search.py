"""Search a folder of images (or the lines of a caption file) with a text or an image: the nearest entries of its
index (:mod:`.collection_index`, brought up to date first), optionally re-ranked with the fusion encoder's ITM
head."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError, VlmoError
from ..factory import ITM_HOW, InferenceModel
from ..model.family import image_embeddings
from ..model.family import pair_logits as family_pair_logits
from .ann import exact_rescore
from .collection_index import ImageIndex, UpdateStats, update_caption_index, update_index
from .embed import encode_texts, image_tensor

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Hit:
    """One search result. ``score`` orders the results: the cosine similarity, or ITM logit + cosine when
    re-ranked (``itm`` is then the ITM match logit). Image hits have ``path``; caption hits ``text`` and ``line``."""

    rank: int
    path: Path | None
    score: float
    similarity: float
    itm: float | None = None
    text: str | None = None
    line: int | None = None
    row: int = -1

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else f"{self.line}: {self.text}"


# ---------------------------------------------------------------------------------------------------- querying
def nearest(index: ImageIndex, queries: torch.Tensor, k: int, device=None) -> list[list[tuple[int, float]]]:
    """For each query vector (``[Q, D]``), the best ``k`` rows of ``index`` as ``(row, cosine)``, best first (ties
    by ascending row). Approximate candidates are re-scored exactly against the stored embeddings. ``device``: the
    model's device (a CUDA device uses GPU FAISS where installed)."""
    if index.ann is None or not len(index):
        raise DataError(f"{index.folder}: none of the entries could be read; nothing to search")
    _, labels = index.searcher(device).candidates(queries, k)
    row_of = index.row_of_id()
    out = []
    for q, found in zip(queries, labels):
        rows, scores = exact_rescore(index.embeddings, [row_of[int(i)] for i in found if i >= 0], q, k)
        out.append(list(zip(rows, scores)))
    return out


def pair_logits(model: InferenceModel, texts: Sequence[str], pixels: torch.Tensor, *,
                max_text_len: int | None = None, head: str = "itm") -> torch.Tensor:
    """Fusion-encoder logits of the pairs ``(texts[i], pixels[i])`` (``[B, classes]``, float32, CPU) from the
    ``itm``, ``vqa`` or ``classify`` head; texts are padded to the longest of the batch only."""
    import torch

    net = model.model
    tok = model.require_tokenizer()
    length = min(max_text_len or net.config.max_text_len, net.config.max_text_len)
    enc = tok.encode_batch(list(texts), length, padding="longest")
    ids = torch.from_numpy(enc["input_ids"]).to(model.device)
    mask = torch.from_numpy(enc["attention_mask"]).to(model.device)
    with torch.no_grad():
        logits = family_pair_logits(net, head, ids, mask, pixels.to(model.device))
    return logits.float().cpu()


def _load_pixels(model: InferenceModel, paths: Sequence[Path]) -> torch.Tensor:
    import torch

    from ..data.transforms import build_transform

    transform = build_transform(model.image_size, False)
    out = []
    for path in paths:
        tensor, reason = image_tensor(path, transform)
        if tensor is None:
            raise DataError(f"{path}: cannot be read for re-ranking ({reason})")
        out.append(tensor)
    return torch.stack(out)


def itm_rerank(model: InferenceModel, index: ImageIndex, candidates: list[tuple[int, float]], *,
               text: str | None = None, pixels: torch.Tensor | None = None, max_text_len: int | None = None,
               batch_size: int = 32) -> list[tuple[int, float, float]]:
    """``(row, itm_logit, itm_logit + similarity)`` of each candidate, best first. A text query pairs with each
    candidate image of an image index; a query image (``pixels`` ``[3, H, W]``) with each caption of a caption
    index. The sum is the combination VLMo's and LAVIS's re-ranking use."""
    model.require_head("itm", ITM_HOW)
    logits: list[float] = []
    for start in range(0, len(candidates), batch_size):
        rows = [row for row, _ in candidates[start:start + batch_size]]
        if index.kind == "image":
            batch_texts, batch_pixels = [text] * len(rows), _load_pixels(model, [index.path_of(r) for r in rows])
        else:
            batch_texts, batch_pixels = [index.text_of(r) for r in rows], pixels.unsqueeze(0).expand(len(rows), -1, -1, -1)
        logits += pair_logits(model, batch_texts, batch_pixels, max_text_len=max_text_len)[:, 1].tolist()
    scored = [(row, itm, itm + sim) for (row, sim), itm in zip(candidates, logits)]
    return sorted(scored, key=lambda item: -item[2])  # sorted() is stable: equal totals keep the ITC order


def image_query_pixels(model: InferenceModel, image) -> torch.Tensor:
    """The eval-transformed ``[3, H, W]`` tensor of a query image (a path or a PIL image)."""
    from PIL import Image

    from ..data.transforms import build_transform

    transform = build_transform(model.image_size, False)
    if isinstance(image, Image.Image):
        return transform(image.convert("RGB"))
    tensor, reason = image_tensor(Path(image), transform)
    if tensor is None:
        raise DataError(f"{image}: cannot read the query image ({reason})")
    return tensor


def _make_hit(index: ImageIndex, rank: int, row: int, score: float, similarity: float, itm: float | None) -> Hit:
    if index.kind == "image":
        return Hit(rank, index.path_of(row), score, similarity, itm, row=row)
    return Hit(rank, None, score, similarity, itm, text=index.text_of(row), line=int(index.entries[row].path), row=row)


def rank_hits(model: InferenceModel, index: ImageIndex, found: list[tuple[int, float]], *, top_k: int,
              rerank_k: int = 0, text: str | None = None, pixels: torch.Tensor | None = None,
              max_text_len: int | None = None) -> list[Hit]:
    """Hits from the nearest rows, the first ``rerank_k`` re-scored with the ITM head."""
    if not rerank_k:
        return [_make_hit(index, r + 1, row, sim, sim, None) for r, (row, sim) in enumerate(found[:top_k])]
    head = min(rerank_k, len(found))
    rescored = itm_rerank(model, index, found[:head], text=text, pixels=pixels, max_text_len=max_text_len)
    sim_of = dict(found)
    hits = [_make_hit(index, r + 1, row, total, sim_of[row], itm) for r, (row, itm, total) in enumerate(rescored)]
    hits += [_make_hit(index, len(hits) + j + 1, row, sim, sim, None) for j, (row, sim) in enumerate(found[head:])]
    return hits[:top_k]


def check_query(text: str | None, image, top_k: int, rerank_k: int, index_kind: str) -> None:
    """The user errors of a query, raised before any work."""
    if (text is None) == (image is None):
        raise VlmoError("give exactly one query: a text or --image QUERY")
    if top_k < 1:
        raise VlmoError(f"--top-k must be >= 1, got {top_k}")
    if text is not None and not text.strip():
        raise VlmoError("the text query is empty")
    if rerank_k and (text is None) == (index_kind == "image"):
        raise VlmoError("--rerank-k re-scores (text, image) pairs with the ITM head: it needs a text query over "
                        "images or an image query over captions")


def search_index(
    model: InferenceModel,
    index: ImageIndex,
    *,
    text: str | None = None,
    image=None,
    top_k: int = 5,
    rerank_k: int = 0,
    max_text_len: int | None = None,
) -> list[Hit]:
    """The ``top_k`` entries of ``index`` for a text or an image query (a path or a PIL image; exactly one)."""
    check_query(text, image, top_k, rerank_k, index.kind)
    if not len(index):
        raise DataError(f"{index.folder}: none of the entries could be read; nothing to search")
    pixels = None
    if text is not None:
        query = encode_texts(model, [text], max_text_len=max_text_len)
    else:
        import torch

        pixels = image_query_pixels(model, image)
        with torch.no_grad():
            query = image_embeddings(model.model, pixels.unsqueeze(0).to(model.device)).float().cpu()
    found = nearest(index, query, max(top_k, rerank_k), model.device)[0]
    return rank_hits(model, index, found, top_k=top_k, rerank_k=rerank_k, text=text, pixels=pixels,
                     max_text_len=max_text_len)


@dataclass
class SearchResult:
    hits: list[Hit]
    stats: UpdateStats
    index: ImageIndex


def search_folder(
    model: InferenceModel,
    folder: str | Path | None,
    text: str | None = None,
    *,
    image=None,
    top_k: int = 5,
    rerank_k: int = 0,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    ann: str | None = None,
    captions: str | Path | None = None,
) -> SearchResult:
    """``vlmo search``: update the index of the image ``folder`` (or of the ``captions`` file), then answer."""
    if (folder is None) == (captions is None):
        raise VlmoError("search either a folder of images (--index FOLDER) or a caption file (--captions FILE)")
    check_query(text, image, top_k, rerank_k, "image" if captions is None else "text")
    if rerank_k:
        model.require_head("itm", ITM_HOW)  # fail before embedding a whole folder
    if captions is None:
        index, stats = update_index(model, folder, cache_dir=cache_dir, batch_size=batch_size, ann=ann)
    else:
        index, stats = update_caption_index(model, captions, cache_dir=cache_dir, ann=ann)
    hits = search_index(model, index, text=text, image=image, top_k=top_k, rerank_k=rerank_k)
    return SearchResult(hits, stats, index)
