"""``benchmarks/bench_loader.py`` runs end to end on a few images and reports every number its README table uses."""

from __future__ import annotations

import json

import pytest
from helpers import load_benchmark


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision are deprecated")
def test_bench_loader_smoke(tmp_path):
    bench = load_benchmark("bench_loader")
    out = tmp_path / "loader.json"
    results = bench.main(["--images", "24", "--batches", "1", "--workers", "0,1", "--max-size", "160",
                          "--rounds", "1", "--step-rate", "500", "--json", str(out)])
    assert json.loads(out.read_text()) == results
    assert results["step_rate"] == 500 and results["step_rate_source"] == "--step-rate"
    assert set(results["samples_per_s"]) == {"prepared", "shards", "prepared_max160"}
    for layout, by_workers in results["samples_per_s"].items():
        assert set(by_workers) == {"w0", "w1"} and min(by_workers.values()) > 0, layout
        assert results["per_core"][layout] == by_workers["w1"]  # one worker process: one core's rate
        assert results["cores_per_gpu_for_2x"][layout] == pytest.approx(1000 / by_workers["w1"], abs=0.05)
        assert results["best_x_step"][layout] == pytest.approx(max(by_workers.values()) / 500, abs=5e-4)
    decoders = results["decoders"]
    assert decoders["decoded_pixels_max_diff"] == 0 and decoders["after_eval_transform_max_diff_levels"] == 0
    assert decoders["pil_decode_ms"] > 0 and results["cpu_count"] >= 1


def test_bench_loader_refuses_a_loader_too_short_to_time():
    bench = load_benchmark("bench_loader")
    with pytest.raises(SystemExit, match="cannot time 4 after 3 prefetched"):
        bench.rate([{"pixel_values": [0]}] * 6, batches=4, workers=1)
