"""``benchmarks/bench_search.py`` runs end to end on a small collection and reports every number it promises."""

from __future__ import annotations

import json

from helpers import load_benchmark


def test_bench_search_smoke(tmp_path, capsys):
    bench = load_benchmark("bench_search")
    out = tmp_path / "bench.json"
    record = bench.main(["--n", "2000", "--dim", "64", "--kinds", "ivfpq,hnsw,flat,scan", "--recall-queries", "50", "--single", "5",
                         "--batches", "2", "--scan-single", "3", "--scan-batches", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert record["n"] == 2000 and record["dim"] == 64 and record["peak_rss_mb"] > 0
    results = record["results"]
    assert set(results) == {"ivfpq", "hnsw", "flat", "scan"}
    for kind, row in results.items():
        for batch in ("batch1", "batch64"):
            assert 0 < row[batch]["p50_ms"] <= row[batch]["p99_ms"], (kind, row)
    assert results["flat"]["recall_at_10"] == 1.0 and results["scan"]["recall_at_10"] == 1.0
    assert results["ivfpq"]["recall_at_10"] >= 0.8 and results["hnsw"]["recall_at_10"] >= 0.8
    assert results["ivfpq"]["build_s"] > 0 and results["ivfpq"]["index_mb"] > 0
    assert "recall@10" in capsys.readouterr().out
