"""FAISS indexes over L2-normalised embeddings (inner product = cosine): exact search for small collections, an
approximate index (IVF-PQ or HNSW) for large ones, with stable int64 ids so that entries can be added and removed.

``flat`` is exact (``IndexFlatIP``, built in memory from the stored embeddings, nothing written). ``ivfpq`` is an
inverted file of ``nlist`` k-means cells with product-quantised residuals (``m`` codes of ``nbits`` bits per
vector); a query scans the ``nprobe`` nearest cells. ``hnsw`` is a graph over the full vectors (``hnsw_m`` links per
node). ``auto`` picks ``flat`` below :data:`FLAT_MAX` vectors and ``ivfpq`` from there on. Approximate candidates
are re-scored exactly against the stored embeddings by the caller (see :func:`exact_rescore`), so reported scores
are always true cosines; only which candidates are found is approximate, and :func:`recall_at_k` measures that.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import VlmoError
from ..outputs import atomic_file

if TYPE_CHECKING:
    import numpy as np

ANN_KINDS = ("auto", "flat", "ivfpq", "hnsw")
#: below this many vectors ``auto`` searches exactly (a full scan of 100,000 x 768 is 77 M multiply-adds a query)
FLAT_MAX = 100_000
#: an IVF-PQ index is re-trained when the collection has grown or shrunk by this factor since training
RETRAIN_FACTOR = 4
#: candidates fetched from an approximate index per requested result, then re-scored exactly
REFINE_FACTOR = 4


@dataclass(frozen=True)
class AnnParams:
    """How an index is (to be) built. ``kind`` is ``flat``, ``ivfpq`` or ``hnsw`` (never ``auto``)."""

    kind: str
    nlist: int = 0
    m: int = 0
    nbits: int = 0
    nprobe: int = 0
    hnsw_m: int = 0
    ef_search: int = 0
    trained_on: int = 0

    def describe(self) -> str:
        if self.kind == "ivfpq":
            return f"IVF-PQ (nlist {self.nlist}, {self.m}x{self.nbits}-bit codes, nprobe {self.nprobe})"
        if self.kind == "hnsw":
            return f"HNSW (M {self.hnsw_m}, efSearch {self.ef_search})"
        return "exact (flat inner product)"

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_kind(requested: str, count: int) -> str:
    """The index kind for ``count`` vectors: ``requested`` unless it is ``auto``."""
    if requested not in ANN_KINDS:
        raise VlmoError(f"--ann must be one of {', '.join(ANN_KINDS)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "flat" if count < FLAT_MAX else "ivfpq"


def _pq_subquantizers(dim: int) -> int:
    """The largest number of sub-vectors of at least 8 dimensions that divides ``dim``."""
    for m in range(max(1, dim // 8), 0, -1):
        if dim % m == 0:
            return m
    return 1


def plan(kind: str, count: int, dim: int) -> AnnParams:
    """Parameters of a ``kind`` index for ``count`` vectors of dimension ``dim``.

    IVF-PQ: ``nlist`` = the power of two nearest to sqrt(count), at most count / 39 (k-means wants 39 points a cell);
    8-bit codes (fewer bits for tiny collections, which cannot train 256 centroids); ``nprobe`` = nlist / 32 (at
    least 8 cells, all cells when there are few)."""
    if kind == "flat":
        return AnnParams("flat")
    if kind == "hnsw":
        return AnnParams("hnsw", hnsw_m=32, ef_search=128)
    if kind != "ivfpq":
        raise VlmoError(f"unknown index kind {kind!r}")
    nlist = 2 ** round(math.log2(max(1.0, math.sqrt(count))))
    nlist = max(1, min(nlist, count // 39))
    nbits = max(1, min(8, int(math.log2(max(2, count)))))
    nprobe = min(nlist, max(8, nlist // 32))
    return AnnParams("ivfpq", nlist=nlist, m=_pq_subquantizers(dim), nbits=nbits, nprobe=nprobe, trained_on=count)


def _faiss():
    import faiss

    return faiss


def _as_matrix(vectors) -> np.ndarray:
    import numpy as np

    if hasattr(vectors, "numpy"):
        vectors = vectors.detach().float().cpu().numpy()
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _training_sample(vectors: np.ndarray, params: AnnParams, seed: int = 0) -> np.ndarray:
    """40 points per cell (and as many for each PQ centroid): the sample size k-means needs, and no more."""
    import numpy as np

    want = max(40 * params.nlist, 40 * 2 ** params.nbits)
    if len(vectors) <= want:
        return vectors
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), want, replace=False))
    return np.ascontiguousarray(vectors[rows])


class AnnIndex:
    """A FAISS index of ``params.kind`` whose labels are the caller's int64 ids."""

    def __init__(self, params: AnnParams, index, dim: int) -> None:
        self.params = params
        self.index = index
        self.dim = dim

    # -------------------------------------------------------------------------------------------- building
    @classmethod
    def build(cls, params: AnnParams, vectors, ids) -> AnnIndex:
        """Train (IVF-PQ) and fill an index with ``vectors`` labelled ``ids``."""
        import numpy as np

        faiss = _faiss()
        x = _as_matrix(vectors)
        labels = np.ascontiguousarray(ids, dtype=np.int64)
        dim = x.shape[1]
        if params.kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif params.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = 64
            inner.hnsw.efSearch = params.ef_search
            index = faiss.IndexIDMap2(inner)
        else:
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFPQ(quantizer, dim, params.nlist, params.m, params.nbits, faiss.METRIC_INNER_PRODUCT)
            index.cp.min_points_per_centroid = 1  # small collections: train anyway, without a warning per call
            index.pq.cp.min_points_per_centroid = 1
            index.nprobe = params.nprobe
            index.train(_training_sample(x, params))
            params = AnnParams(**{**params.as_dict(), "trained_on": len(x)})
        if len(x):
            index.add_with_ids(x, labels)
        return cls(params, index, dim)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def supports_removal(self) -> bool:
        return self.params.kind != "hnsw"

    def add(self, vectors, ids) -> None:
        import numpy as np

        x = _as_matrix(vectors)
        if len(x):
            self.index.add_with_ids(x, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids) -> None:
        """Drop ``ids`` (flat and IVF-PQ; an HNSW graph cannot drop nodes, the caller rebuilds it)."""
        import numpy as np

        if not self.supports_removal():
            raise ValueError("an HNSW index cannot remove entries; rebuild it")
        labels = np.ascontiguousarray(ids, dtype=np.int64)
        if len(labels):
            self.index.remove_ids(_faiss().IDSelectorBatch(labels))

    def needs_retraining(self, count: int) -> bool:
        """An IVF-PQ index trained on a collection of a very different size (its cells no longer fit)."""
        if self.params.kind != "ivfpq":
            return False
        trained = max(1, self.params.trained_on)
        return count > RETRAIN_FACTOR * trained or count * RETRAIN_FACTOR < trained

    # -------------------------------------------------------------------------------------------- search
    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` of shape ``[Q, k']`` (``k'`` = ``k`` capped by the size; missing slots have id -1)."""
        x = _as_matrix(queries)
        k = max(1, min(k, len(self)))
        if self.params.kind == "hnsw":
            _faiss().downcast_index(self.index.index).hnsw.efSearch = max(self.params.ef_search, k)
        return self.index.search(x, k)

    def candidates(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search`, with more candidates from an approximate index (for exact re-scoring)."""
        return self.search(queries, k if self.params.kind == "flat" else REFINE_FACTOR * k)

    # -------------------------------------------------------------------------------------------- files
    def save(self, path: str | Path) -> Path:
        """Write atomically (:func:`~vlmo_cli.outputs.atomic_file`: temporary file next to ``path``, then rename)."""
        target = Path(path)
        with atomic_file(target) as temp:
            _faiss().write_index(self.index, str(temp))
        return target

    @classmethod
    def load(cls, params: AnnParams, path: str | Path) -> AnnIndex | None:
        """The index stored at ``path``, or ``None`` when it is missing or unreadable (it is then rebuilt)."""
        if not Path(path).is_file():
            return None
        try:
            index = _faiss().read_index(str(path))
        except RuntimeError:
            return None
        if params.kind == "ivfpq":
            index.nprobe = params.nprobe
        return cls(params, index, index.d)


def to_gpu_if_available(ann: AnnIndex, device) -> AnnIndex:
    """Move the index to the GPU when a GPU build of FAISS is installed and ``device`` is CUDA (HNSW stays on the
    CPU: FAISS has no GPU HNSW)."""
    faiss = _faiss()
    if getattr(device, "type", str(device)) != "cuda" or not hasattr(faiss, "StandardGpuResources"):
        return ann
    if ann.params.kind == "hnsw":
        return ann
    resources = faiss.StandardGpuResources()
    return AnnIndex(ann.params, faiss.index_cpu_to_gpu(resources, 0, ann.index), ann.dim)


def exact_rescore(vectors, candidate_rows, query, k: int) -> tuple[list[int], list[float]]:
    """The best ``k`` of ``candidate_rows`` by exact inner product with ``query``; ties by ascending row."""
    import numpy as np

    rows = np.asarray([r for r in candidate_rows if r >= 0], dtype=np.int64)
    if not len(rows):
        return [], []
    rows = np.unique(rows)  # sorted: equal scores then keep the ascending-row order below
    q = _as_matrix(query).reshape(-1)
    scores = _as_matrix(vectors[rows]) @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return rows[order].tolist(), scores[order].astype(float).tolist()


def recall_at_k(ann: AnnIndex, vectors, ids, *, k: int = 10, queries: int = 1000, seed: int = 0) -> float:
    """Recall@k of ``ann`` (after exact re-scoring of its candidates) against exact search, with up to ``queries``
    of the indexed vectors as queries: the mean fraction of the exact top ``k`` found."""
    import numpy as np

    faiss = _faiss()
    x = _as_matrix(vectors)
    labels = np.asarray(ids, dtype=np.int64)
    if not len(x):
        return 1.0
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(x), min(queries, len(x)), replace=False))
    q = np.ascontiguousarray(x[pick])
    k = min(k, len(x))
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    _, truth = exact.search(q, k)
    _, found = ann.candidates(q, k)
    row_of = {int(label): row for row, label in enumerate(labels)}
    hits = 0
    for i in range(len(q)):
        rows = [row_of[int(label)] for label in found[i] if label >= 0]
        best, _ = exact_rescore(x, rows, q[i], k)
        hits += len(set(best) & set(truth[i].tolist()))
    return hits / (len(q) * k)
