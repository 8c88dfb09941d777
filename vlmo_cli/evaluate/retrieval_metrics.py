"""Image-text retrieval recall (COCO 5k / Flickr30k 1k protocol), computed in fp32 and in blocks.

Protocol (VLMo ``compute_irtr_recall``, ALBEF ``itm_eval``):

- every image is a query over all texts ("text retrieval", TR, image -> text): a hit at K when **any** of the
  image's captions is among the K best texts;
- every caption is a query over all images ("image retrieval", IR, text -> image): a hit at K when its single
  source image is among the K best images;
- R@K is the mean hit rate over the queries, reported in percent; ``r_mean`` is the mean of the six numbers
  (VLMo's ``val_avg`` x 100) and ``rsum`` their sum.

Tie rule. The official code takes ``torch.topk`` order, which is unspecified for equal scores (and fp16 scores make
ties common). Here candidates are ordered by descending score and equal scores by ascending candidate index -- the
order of a *stable* descending sort of the full score row. Equivalently, the rank of a candidate is the number of
candidates with a strictly greater score plus the number with an equal score and a smaller index. Without ties
this is exactly the official protocol; with ties it is deterministic and independent of chunking, device and
thread count (given identical score values).

Memory. The similarity matrix is never materialised: blocks of ``chunk_size`` images x ``candidate_chunk_size``
texts are computed one at a time and both directions keep a running top-K that is merged block by block, so the
memory is bounded by one block whatever N is, and each similarity is computed once for both directions.
Scores are fp32 with TF32 disabled for the duration of the computation.

Re-ranking. :func:`rerank_topk` / :func:`rerank_retrieval` re-score each query's first ``rerank_k`` candidates
with a second scorer (the fusion encoder's ITM head, plugged in by the model code as a callable) and reorder
them; positions after ``rerank_k`` keep the first-stage order, so R@K for K > rerank_k is unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from vlmo_cli.errors import DataError

TIE_RULE = "descending score, ties broken by ascending candidate index (stable sort order)"
PROTOCOL = (
    "COCO/Flickr30k retrieval: TR (image->text) hit@K if any of the image's captions is in the top K; "
    "IR (text->image) hit@K if the caption's image is in the top K; means over queries in percent; "
    "fp32 dot-product scores"
)

PairScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``score_fn(query_idx, candidate_idx) -> scores``: three 1-D tensors of equal length B, one score per pair."""


@dataclass(frozen=True)
class TopK:
    """The best candidates of each query, best first, under :data:`TIE_RULE`.

    Attributes:
        indices: ``[num_queries, k]`` int64 candidate indices (CPU).
        scores: ``[num_queries, k]`` float32 scores of those candidates (CPU).
    """

    indices: torch.Tensor
    scores: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])


@dataclass(frozen=True)
class RetrievalResult:
    """Ranked lists of both directions and the recall metrics computed from them.

    Attributes:
        i2t: for each image, its best texts (text retrieval).
        t2i: for each text, its best images (image retrieval).
        text_to_image: ``[num_texts]`` image index of each caption.
        ks: the K of the reported R@K.
        metrics: ``tr_r{K}``, ``ir_r{K}``, ``tr_mean``, ``ir_mean``, ``r_mean``, ``rsum`` (percent).
    """

    i2t: TopK
    t2i: TopK
    text_to_image: torch.Tensor
    ks: tuple[int, ...]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return int(self.i2t.indices.shape[0])

    @property
    def num_texts(self) -> int:
        return int(self.t2i.indices.shape[0])

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary: metrics, counts, K values, protocol and tie rule (not the ranked lists)."""
        return {
            "metrics": dict(self.metrics),
            "num_images": self.num_images,
            "num_texts": self.num_texts,
            "ks": list(self.ks),
            "protocol": PROTOCOL,
            "tie_rule": TIE_RULE,
        }


# ----------------------------------------------------------------------------------------------------------------
# Exact top-k under the tie rule
# ----------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _fp32_matmul() -> Iterator[None]:
    """Disable TF32 (or bf16 passes) for float32 matmuls while ranking; training code may have enabled them."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _row_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of every row of a 2-D score block, ordered by :data:`TIE_RULE`.

    ``torch.topk`` returns the right *values* but an arbitrary choice among values equal to the k-th one and an
    arbitrary order among equal values. Taking k + 1 values shows where that matters: when the (k+1)-th value is
    below the k-th, every entry equal to the k-th value is in the list, the set is right and only the order among
    equal values needs fixing; the few rows with a tie across the boundary are redone by
    :func:`_row_topk_exact`.
    """
    num_candidates = scores.shape[1]
    k = min(k, num_candidates)
    if k == num_candidates:
        values, order = torch.sort(scores, dim=1, descending=True, stable=True)
        return values, order
    values, index = torch.topk(scores, k + 1, dim=1)
    boundary_tie = values[:, k] == values[:, k - 1]
    values, index = values[:, :k], index[:, :k]
    if bool(boundary_tie.any()):
        rows = boundary_tie.nonzero()[:, 0]
        values[rows], index[rows] = _canonical_order(*_row_topk_exact(scores[rows], k))
    # topk's values are sorted; only rows with equal neighbours need their indices put in ascending order.
    tied = (values[:, 1:] == values[:, :-1]).any(dim=1)
    if bool(tied.any()):
        rows = tied.nonzero()[:, 0]
        values[rows], index[rows] = _canonical_order(values[rows], index[rows])
    return values, index


def _canonical_order(values: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order lists by descending value, equal values by ascending index."""
    index, by_index = torch.sort(index, dim=1)
    values = values.gather(1, by_index)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, order), index.gather(1, order)


def _row_topk_exact(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` (1 <= k < columns) under the tie rule by construction, unordered.

    Take every entry strictly above the k-th largest value, then the lowest-index entries equal to it until k are
    taken.
    """
    kth = torch.topk(scores, k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
    greater = scores > kth
    equal = scores == kth
    still_needed = k - greater.sum(dim=1, keepdim=True)
    take_equal = equal & (torch.cumsum(equal, dim=1) <= still_needed)
    # nonzero() walks the selection row-major, so every row yields exactly k indices in ascending order.
    index = (greater | take_equal).nonzero()[:, 1].view(-1, k)
    return scores.gather(1, index), index


def _merge(
    best: tuple[torch.Tensor, torch.Tensor] | None, new: tuple[torch.Tensor, torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two top-k lists whose candidates of ``best`` all have smaller indices than those of ``new``.

    Concatenating (old, new) keeps equal scores in ascending index order, so a stable sort keeps the tie rule.
    """
    if best is None:
        return new
    values = torch.cat([best[0], new[0]], dim=1)
    index = torch.cat([best[1], new[1]], dim=1)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    return values.gather(1, order), index.gather(1, order)


def _check_embeddings(name: str, embeds: torch.Tensor) -> None:
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 2:
        raise DataError(f"{name} must be a 2-D tensor [N, D], got {getattr(embeds, 'shape', type(embeds))}")
    if embeds.shape[0] == 0:
        raise DataError(f"{name} is empty (0 rows)")
    if embeds.is_floating_point() and not bool(torch.isfinite(embeds).all()):
        bad = (~torch.isfinite(embeds)).any(dim=1).nonzero()[:5, 0].tolist()
        raise DataError(f"{name} contains NaN or infinite values (rows {bad}...)")


def _check_chunk(name: str, value: int) -> int:
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _blockwise_topk(
    rows: torch.Tensor,
    cols: torch.Tensor,
    k_rows: int,
    k_cols: int,
    row_chunk: int,
    col_chunk: int,
) -> tuple[TopK | None, TopK | None]:
    """Top-k over ``cols`` for each row and (optionally) top-k over ``rows`` for each column of ``rows @ cols.T``.

    Blocks are visited row-chunk-major; candidates of either direction therefore arrive in ascending index order,
    which is what :func:`_merge` needs. ``k_cols == 0`` skips the column direction.
    """
    num_rows, num_cols = rows.shape[0], cols.shape[0]
    device = rows.device
    row_results_s: list[torch.Tensor] = []
    row_results_i: list[torch.Tensor] = []
    col_best: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * ((num_cols + col_chunk - 1) // col_chunk)
    single_col_block = num_cols <= col_chunk
    cols_f32 = cols.to(device=device, dtype=torch.float32) if single_col_block else None

    with torch.no_grad(), _fp32_matmul():
        for r0 in range(0, num_rows, row_chunk):
            block_rows = rows[r0 : r0 + row_chunk].to(dtype=torch.float32)
            row_best: tuple[torch.Tensor, torch.Tensor] | None = None
            for block_id, c0 in enumerate(range(0, num_cols, col_chunk)):
                block_cols = cols_f32 if cols_f32 is not None else cols[c0 : c0 + col_chunk].to(device, torch.float32)
                block = block_rows @ block_cols.T
                if k_rows > 0:
                    values, index = _row_topk(block, k_rows)
                    row_best = _merge(row_best, (values, index + c0), k_rows)
                if k_cols > 0:
                    values, index = _row_topk(block.T.contiguous(), k_cols)
                    col_best[block_id] = _merge(col_best[block_id], (values, index + r0), k_cols)
            if row_best is not None:
                row_results_s.append(row_best[0].cpu())
                row_results_i.append(row_best[1].cpu())

    row_topk = None
    if k_rows > 0:
        row_topk = TopK(indices=torch.cat(row_results_i), scores=torch.cat(row_results_s))
    col_topk = None
    if k_cols > 0:
        done = [best for best in col_best if best is not None]
        col_topk = TopK(
            indices=torch.cat([best[1].cpu() for best in done]), scores=torch.cat([best[0].cpu() for best in done])
        )
    return row_topk, col_topk


def topk_similarity(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    *,
    chunk_size: int = 1024,
    candidate_chunk_size: int = 8192,
) -> TopK:
    """For each query, the ``k`` candidates with the largest dot product (fp32), ordered by :data:`TIE_RULE`.

    Used for search over an index as well as by :func:`evaluate_retrieval`. Pass L2-normalised embeddings for
    cosine similarity. Works on any device (computation happens on ``queries.device``); results are on CPU.

    Args:
        queries: ``[Q, D]`` query embeddings.
        candidates: ``[C, D]`` candidate embeddings.
        k: number of candidates kept per query (capped at ``C``).
        chunk_size: queries per block.
        candidate_chunk_size: candidates per block; peak memory ~ ``chunk_size * candidate_chunk_size * 4`` bytes
            (plus a few masks of the same shape).
    """
    _check_embeddings("queries", queries)
    _check_embeddings("candidates", candidates)
    if queries.shape[1] != candidates.shape[1]:
        raise DataError(f"embedding widths differ: queries D={queries.shape[1]}, candidates D={candidates.shape[1]}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    result, _ = _blockwise_topk(
        queries,
        candidates,
        k_rows=int(k),
        k_cols=0,
        row_chunk=_check_chunk("chunk_size", chunk_size),
        col_chunk=_check_chunk("candidate_chunk_size", candidate_chunk_size),
    )
    assert result is not None
    return result


def retrieval_topk(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    k: int,
    *,
    chunk_size: int = 1024,
    candidate_chunk_size: int = 8192,
) -> tuple[TopK, TopK]:
    """Top-``k`` texts for every image and top-``k`` images for every text, in one blocked pass over the scores.

    Blocks are ``chunk_size`` images x ``candidate_chunk_size`` texts; each score is computed once and used by
    both directions, so both see bit-identical values.
    """
    _check_embeddings("image_embeds", image_embeds)
    _check_embeddings("text_embeds", text_embeds)
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise DataError(
            f"embedding widths differ: images D={image_embeds.shape[1]}, texts D={text_embeds.shape[1]}"
        )
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    i2t, t2i = _blockwise_topk(
        image_embeds,
        text_embeds.to(image_embeds.device),
        k_rows=int(k),
        k_cols=int(k),
        row_chunk=_check_chunk("chunk_size", chunk_size),
        col_chunk=_check_chunk("candidate_chunk_size", candidate_chunk_size),
    )
    assert i2t is not None and t2i is not None
    return i2t, t2i


# ----------------------------------------------------------------------------------------------------------------
# Recall
# ----------------------------------------------------------------------------------------------------------------


def build_text_to_image(captions_per_image: Sequence[int]) -> torch.Tensor:
    """``text_to_image`` for texts listed image by image: ``[2, 3] -> [0, 0, 1, 1, 1]``."""
    counts = torch.as_tensor(list(captions_per_image), dtype=torch.long)
    if counts.numel() and int(counts.min()) < 0:
        raise DataError("captions_per_image must be non-negative")
    return torch.repeat_interleave(torch.arange(counts.numel()), counts)


def check_text_to_image(text_to_image: torch.Tensor, num_images: int, num_texts: int) -> torch.Tensor:
    """Validate the caption -> image map: one entry per text, valid indices, every image has a caption.

    Returns it as a CPU int64 tensor.
    """
    mapping = torch.as_tensor(text_to_image).to("cpu", torch.long).reshape(-1)
    if mapping.numel() != num_texts:
        raise DataError(f"text_to_image has {mapping.numel()} entries but there are {num_texts} texts")
    bad = ((mapping < 0) | (mapping >= num_images)).nonzero()[:5, 0].tolist()
    if bad:
        raise DataError(
            f"text_to_image points outside [0, {num_images}) for texts {bad} "
            f"(values {[int(mapping[i]) for i in bad]})"
        )
    without_caption = (torch.bincount(mapping, minlength=num_images) == 0).nonzero()[:, 0]
    if without_caption.numel():
        raise DataError(
            f"{without_caption.numel()} image(s) have no caption, e.g. images {without_caption[:5].tolist()}; "
            "text retrieval recall is undefined for them"
        )
    return mapping


def recall_at_k(
    i2t_indices: torch.Tensor,
    t2i_indices: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """R@K of both directions from ranked candidate lists (best first), in percent.

    ``tr_r{K}`` (image -> text) is the share of images with any own caption among their first K texts;
    ``ir_r{K}`` (text -> image) the share of texts whose image is among their first K images. A list shorter than
    K counts what it holds. ``r_mean`` is the mean of all ``tr``/``ir`` values, ``rsum`` their sum.
    """
    mapping = torch.as_tensor(text_to_image).to("cpu", torch.long)
    i2t_indices = i2t_indices.to("cpu", torch.long)
    t2i_indices = t2i_indices.to("cpu", torch.long)
    image_ids = torch.arange(i2t_indices.shape[0]).unsqueeze(1)
    metrics: dict[str, float] = {}
    for k in ks:
        if int(k) < 1:
            raise ValueError(f"K must be >= 1, got {k}")
        tr_hits = (mapping[i2t_indices[:, :k]] == image_ids).any(dim=1)
        ir_hits = (t2i_indices[:, :k] == mapping.unsqueeze(1)).any(dim=1)
        metrics[f"tr_r{k}"] = 100.0 * tr_hits.double().mean().item()
        metrics[f"ir_r{k}"] = 100.0 * ir_hits.double().mean().item()
    tr = [metrics[f"tr_r{k}"] for k in ks]
    ir = [metrics[f"ir_r{k}"] for k in ks]
    metrics["tr_mean"] = sum(tr) / len(tr)
    metrics["ir_mean"] = sum(ir) / len(ir)
    metrics["r_mean"] = (sum(tr) + sum(ir)) / (len(tr) + len(ir))
    metrics["rsum"] = sum(tr) + sum(ir)
    return metrics


#: below this many images (or texts) a recall says little about a model: the standard test pools are 1000 images
#: (Flickr30k) and 5000 (COCO)
SMALL_POOL = 100


def pool_warnings(num_images: int, num_texts: int, ks: Sequence[int] = (1, 5, 10), small: int = SMALL_POOL
                  ) -> list[str]:
    """Why a recall of this candidate pool may mislead: R@K with K >= the pool is 100 % whatever the model does,
    and a pool smaller than ``small`` is far easier than the standard test sets."""
    warnings = []
    for direction, candidates, what in (("ir", num_images, "images"), ("tr", num_texts, "texts")):
        trivial = [int(k) for k in ks if int(k) >= candidates]
        if trivial:
            names = ", ".join(f"{direction.upper()}@{k}" for k in trivial)
            warnings.append(f"{names} = 100 % by construction: only {candidates} candidate {what} (K >= pool)")
    if min(num_images, num_texts) < small:
        warnings.append(f"small candidate pool ({num_images} images, {num_texts} texts; under {small}): recall is "
                        "not comparable with Flickr30k 1k / COCO 5k test numbers")
    return warnings


def evaluate_retrieval(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_to_image: torch.Tensor | Sequence[int],
    *,
    ks: Sequence[int] = (1, 5, 10),
    keep_top: int = 0,
    chunk_size: int = 1024,
    candidate_chunk_size: int = 8192,
) -> RetrievalResult:
    """Image-text retrieval recall on a split: the one call ``vlmo eval retrieval`` needs after encoding.

    Args:
        image_embeds: ``[N_img, D]`` image embeddings (L2-normalised for cosine), any device and dtype.
        text_embeds: ``[N_txt, D]`` caption embeddings.
        text_to_image: ``[N_txt]`` index of each caption's image (any number of captions per image, >= 1).
        ks: the K of R@K.
        keep_top: keep at least this many candidates per query in the result (e.g. the re-ranking K or the
            number of examples to draw); at least ``max(ks)`` are kept.
        chunk_size: images per block.
        candidate_chunk_size: texts per block.
    """
    ks = tuple(int(k) for k in ks)
    if not ks:
        raise ValueError("ks must not be empty")
    _check_embeddings("image_embeds", image_embeds)
    _check_embeddings("text_embeds", text_embeds)
    mapping = check_text_to_image(torch.as_tensor(text_to_image), image_embeds.shape[0], text_embeds.shape[0])
    k = max(max(ks), int(keep_top))
    i2t, t2i = retrieval_topk(
        image_embeds, text_embeds, k, chunk_size=chunk_size, candidate_chunk_size=candidate_chunk_size
    )
    return RetrievalResult(
        i2t=i2t, t2i=t2i, text_to_image=mapping, ks=ks, metrics=recall_at_k(i2t.indices, t2i.indices, mapping, ks)
    )


# ----------------------------------------------------------------------------------------------------------------
# Re-ranking (second-stage scorer, e.g. the ITM head)
# ----------------------------------------------------------------------------------------------------------------


def score_candidates(
    candidates: torch.Tensor, score_fn: PairScoreFn, *, batch_size: int = 256
) -> torch.Tensor:
    """Call ``score_fn(query_idx, candidate_idx)`` on every (query, candidate) pair of ``candidates [Q, k]``.

    Pairs are sent query-major in batches of ``batch_size`` pairs; the result is ``[Q, k]`` float32 on CPU.
    """
    batch_size = _check_chunk("batch_size", batch_size)
    num_queries, k = candidates.shape
    query_idx = torch.arange(num_queries).repeat_interleave(k)
    candidate_idx = candidates.reshape(-1).to("cpu", torch.long)
    pieces = []
    for start in range(0, query_idx.numel(), batch_size):
        q = query_idx[start : start + batch_size]
        scores = torch.as_tensor(score_fn(q, candidate_idx[start : start + batch_size]))
        if scores.numel() != q.numel():
            raise ValueError(f"score_fn returned {scores.numel()} scores for a batch of {q.numel()} pairs")
        pieces.append(scores.detach().reshape(-1).to("cpu", torch.float32))
    return torch.cat(pieces).view(num_queries, k)


def rerank_topk(
    topk: TopK,
    rerank_k: int,
    *,
    score_fn: PairScoreFn | None = None,
    candidate_scores: torch.Tensor | None = None,
    batch_size: int = 256,
    combine: Literal["replace", "add"] = "replace",
) -> TopK:
    """Reorder each query's first ``rerank_k`` candidates by a second-stage score.

    Give either ``score_fn(query_idx, candidate_idx) -> scores`` (called on pairs in batches; the model code
    passes its ITM head here) or precomputed ``candidate_scores [Q, >= rerank_k]`` aligned with
    ``topk.indices``. ``combine="replace"`` ranks by the new score alone (ALBEF); ``"add"`` by new + first-stage
    score (LAVIS, VLMo's rerank code). Equal new scores keep their first-stage order. Candidates after
    ``rerank_k`` keep their first-stage order and scores.
    """
    if (score_fn is None) == (candidate_scores is None):
        raise ValueError("give exactly one of score_fn or candidate_scores")
    if combine not in ("replace", "add"):
        raise ValueError(f"combine must be 'replace' or 'add', got {combine!r}")
    k = min(_check_chunk("rerank_k", rerank_k), topk.k)
    head = topk.indices[:, :k]
    if candidate_scores is not None:
        new = torch.as_tensor(candidate_scores).to("cpu", torch.float32)
        if new.ndim != 2 or new.shape[0] != head.shape[0] or new.shape[1] < k:
            raise ValueError(f"candidate_scores must be [{head.shape[0]}, >={k}], got {list(new.shape)}")
        new = new[:, :k]
    else:
        assert score_fn is not None
        new = score_candidates(head, score_fn, batch_size=batch_size)
    if combine == "add":
        new = new + topk.scores[:, :k]
    order = torch.sort(new, dim=1, descending=True, stable=True).indices
    return TopK(
        indices=torch.cat([head.gather(1, order), topk.indices[:, k:]], dim=1),
        scores=torch.cat([new.gather(1, order), topk.scores[:, k:]], dim=1),
    )


def rerank_retrieval(
    result: RetrievalResult,
    pair_score_fn: PairScoreFn,
    rerank_k: int,
    *,
    batch_size: int = 256,
    combine: Literal["replace", "add"] = "replace",
) -> RetrievalResult:
    """Re-rank both directions of ``result`` with ``pair_score_fn(image_idx, text_idx) -> scores`` and recompute R@K.

    The same pair scorer serves both directions (an ITM head scores an (image, text) pair whichever is the query).
    """
    i2t = rerank_topk(result.i2t, rerank_k, score_fn=pair_score_fn, batch_size=batch_size, combine=combine)
    t2i = rerank_topk(
        result.t2i,
        rerank_k,
        score_fn=lambda text_idx, image_idx: pair_score_fn(image_idx, text_idx),
        batch_size=batch_size,
        combine=combine,
    )
    return RetrievalResult(
        i2t=i2t,
        t2i=t2i,
        text_to_image=result.text_to_image,
        ks=result.ks,
        metrics=recall_at_k(i2t.indices, t2i.indices, result.text_to_image, result.ks),
    )
