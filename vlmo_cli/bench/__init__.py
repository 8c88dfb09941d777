"""Throughput benchmarks on synthetic batches: ``vlmo bench`` (the library behind the command).

:mod:`.training` times a training stage (built by the training loop's own builder), :mod:`.retrieval` a retrieval
evaluation, :mod:`.reference_step` is the straightforward stage-3 step they and the tests compare against, and
:mod:`.common` holds the settings, the result and the device helpers.
"""

from __future__ import annotations

from .common import (PEAK_TFLOPS, STAGE_SECTIONS, BenchResult, BenchSettings, default_peak_tflops, device_name,
                     summarise)
from .training import TrainingStepper, bench_training, build_training, synthetic_batch, train_flops_per_sample

__all__ = ["PEAK_TFLOPS", "STAGE_SECTIONS", "BenchResult", "BenchSettings", "TrainingStepper", "bench_training",
           "build_training", "default_peak_tflops", "device_name", "run_bench", "summarise", "synthetic_batch",
           "train_flops_per_sample"]


def run_bench(settings: BenchSettings) -> BenchResult:
    """``vlmo bench``: the training benchmark, or the retrieval-evaluation one for ``stage="eval-retrieval"``."""
    if settings.stage == "eval-retrieval":
        from .retrieval import bench_eval_retrieval

        return bench_eval_retrieval(settings)
    return bench_training(settings)
