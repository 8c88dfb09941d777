"""Search at scale: N synthetic L2-normalised embeddings (default 1,000,000 at D = 768) in the FAISS indexes that
``vlmo search`` and ``vlmo serve`` use, against exact search and the full torch scan of the previous implementation.

    python benchmarks/bench_search.py                       # 1 M vectors
    python benchmarks/bench_search.py --n 200000 --kinds ivfpq,hnsw --out /tmp/bench_search.json

Data: a two-level Gaussian mixture on the sphere (coarse clusters, each holding fine clusters of about 20
vectors), so that a query has a meaningful set of near neighbours as real embeddings do; uniformly random unit
vectors in 768 dimensions are all nearly orthogonal and have no neighbours worth finding. Queries are fresh draws
from the same mixture (not indexed vectors). For each index: build time, index memory (serialised size), query
latency p50/p99 at batch 1 and batch 64 (the whole search path: ANN candidates then exact re-scoring against the
stored vectors), recall@10 against exact search. ``scan`` is the previous implementation: ``embeddings @ query``
then a stable sort of all N scores. The last line is a JSON record.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlmo_cli.inference.ann import AnnIndex, exact_rescore, plan  # noqa: E402


def synthetic(n: int, dim: int, seed: int, *, fine_size: int = 20, chunk: int = 65536) -> tuple[np.ndarray, callable]:
    """``(vectors [n, dim] float32 unit rows, draw(q) -> q fresh queries from the same mixture)``."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((max(1, n // 1000), dim)).astype(np.float32)
    n_fine = max(1, n // fine_size)
    parent = rng.integers(0, len(coarse), n_fine)
    scale = np.float32(1 / np.sqrt(dim))

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    coarse = unit(coarse)
    fine = np.empty((n_fine, dim), dtype=np.float32)
    for s in range(0, n_fine, chunk):
        e = min(n_fine, s + chunk)
        fine[s:e] = unit(coarse[parent[s:e]] + 0.8 * scale * rng.standard_normal((e - s, dim), dtype=np.float32))

    def points(rows: np.ndarray, gen: np.random.Generator) -> np.ndarray:
        return unit(fine[rows] + 0.6 * scale * gen.standard_normal((len(rows), dim), dtype=np.float32))

    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        out[s:e] = points(rng.integers(0, n_fine, e - s), rng)
    query_rng = np.random.default_rng(seed + 1)
    return out, lambda q: np.ascontiguousarray(points(query_rng.integers(0, n_fine, q), query_rng))


def percentiles(times: list[float], cpu: list[float]) -> dict[str, float]:
    ms, cpu_ms = np.asarray(times) * 1000, np.asarray(cpu) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "cpu_p50_ms": float(np.percentile(cpu_ms, 50))}


def time_calls(fn, batches: list[np.ndarray]) -> dict[str, float]:
    """Wall-clock p50/p99 and the p50 of the CPU time of this process (all threads): on a loaded machine the wall
    time includes waiting for a core, the CPU time does not."""
    fn(batches[0])  # warm-up
    times, cpu = [], []
    for batch in batches:
        t0, c0 = time.perf_counter(), time.process_time()
        fn(batch)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return percentiles(times, cpu)


def ann_search(ann: AnnIndex, vectors: np.ndarray, k: int):
    """The search path of :func:`vlmo_cli.inference.search.nearest` (ids are rows here)."""

    def run(queries: np.ndarray) -> list[list[int]]:
        _, labels = ann.candidates(queries, k)
        return [exact_rescore(vectors, found, q, k)[0] for q, found in zip(queries, labels)]

    return run


def torch_scan(vectors: np.ndarray, k: int):
    """The previous implementation: all N scores, a stable full sort, the first k."""
    import torch

    table = torch.from_numpy(vectors)

    def run(queries: np.ndarray) -> list[list[int]]:
        scores = table @ torch.from_numpy(queries).T
        return [torch.sort(scores[:, j], descending=True, stable=True).indices[:k].tolist()
                for j in range(scores.shape[1])]

    return run


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="indexed vectors")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--kinds", default="ivfpq,flat,scan", help="comma-separated: flat, ivfpq, hnsw, scan")
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--single", type=int, default=200, help="timed batch-1 queries")
    parser.add_argument("--batches", type=int, default=10, help="timed batch-64 queries")
    parser.add_argument("--scan-single", type=int, default=20, help="timed batch-1 queries of flat and scan")
    parser.add_argument("--scan-batches", type=int, default=3, help="timed batch-64 queries of flat and scan")
    parser.add_argument("--threads", type=int, default=0, help="FAISS / torch threads (0: leave as is)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON record here")
    args = parser.parse_args(argv)

    import faiss
    import torch

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    k = 10
    t0 = time.perf_counter()
    vectors, draw = synthetic(args.n, args.dim, args.seed)
    record: dict = {"n": args.n, "dim": args.dim, "threads": faiss.omp_get_max_threads(),
                    "data_seconds": round(time.perf_counter() - t0, 2), "data_mb": vectors.nbytes / 2**20}
    print(f"{args.n:,} x {args.dim} synthetic vectors ({record['data_mb']:.0f} MiB) in {record['data_seconds']}s")
    recall_q = draw(args.recall_queries)
    t0 = time.perf_counter()
    _, truth = faiss.knn(recall_q, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    record["exact_truth_seconds"] = round(time.perf_counter() - t0, 2)
    single = [draw(1) for _ in range(args.single)]
    batched = [draw(64) for _ in range(args.batches)]
    ids = np.arange(args.n, dtype=np.int64)
    results = {}
    for kind in [s.strip() for s in args.kinds.split(",") if s.strip()]:
        row: dict = {}
        if kind == "scan":
            run = torch_scan(vectors, k)
            row.update(build_s=0.0, index_mb=0.0)
            row["batch1"] = time_calls(run, single[:args.scan_single])
            row["batch64"] = time_calls(run, batched[:args.scan_batches])
            row["recall_at_10"] = recall(run(recall_q[:20]), truth[:20])
        elif kind == "flat":  # exact FAISS scan over the stored vectors (IndexFlatIP without copying them)
            def run(queries, _k=k):
                return faiss.knn(queries, vectors, _k, metric=faiss.METRIC_INNER_PRODUCT)[1].tolist()
            row.update(build_s=0.0, index_mb=0.0, recall_at_10=1.0)
            row["batch1"] = time_calls(run, single[:args.scan_single])
            row["batch64"] = time_calls(run, batched[:args.scan_batches])
        else:
            params = plan(kind, args.n, args.dim)
            t0, c0 = time.perf_counter(), time.process_time()
            ann = AnnIndex.build(params, vectors, ids)
            row["build_s"] = round(time.perf_counter() - t0, 2)
            row["build_cpu_s"] = round(time.process_time() - c0, 2)
            row["params"] = ann.params.describe()
            row["index_mb"] = len(faiss.serialize_index(ann.index)) / 2**20
            run = ann_search(ann, vectors, k)
            row["batch1"] = time_calls(run, single)
            row["batch64"] = time_calls(run, batched)
            row["recall_at_10"] = recall(run(recall_q), truth)
            del ann
        results[kind] = row
        print(f"{kind:6s} build {row['build_s']:8.2f}s  index {row['index_mb']:8.1f} MiB  "
              f"batch 1 p50 {row['batch1']['p50_ms']:9.2f} ms p99 {row['batch1']['p99_ms']:9.2f} ms  "
              f"batch 64 p50 {row['batch64']['p50_ms']:9.1f} ms p99 {row['batch64']['p99_ms']:9.1f} ms  "
              f"recall@10 {row['recall_at_10']:.3f}  CPU: build {row.get('build_cpu_s', 0.0):.1f}s, batch 1 "
              f"p50 {row['batch1']['cpu_p50_ms']:.2f} ms, batch 64 p50 {row['batch64']['cpu_p50_ms']:.1f} ms"
              + (f"  [{row['params']}]" if "params" in row else ""),
              flush=True)
    record["results"] = results
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {record['peak_rss_mb']:.0f} MiB")
    line = json.dumps(record)
    print(line)
    if args.out is not None:
        args.out.write_text(line + "\n")
    return record


if __name__ == "__main__":
    main()
