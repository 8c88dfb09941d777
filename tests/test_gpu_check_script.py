"""``benchmarks/gpu_check.sh`` waits for a GPU machine (rare, and timed): keep it from rotting on CPU by running it with
a stand-in interpreter that answers the CUDA probe with yes, on the tiny recipe, within a budget that leaves room
for the first configurations only — the rest must be reported as skipped, and the JSON must still be written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


NEEDS_SHELL = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                 reason="needs bash and timeout")


def stand_in_env(tmp_path, **extra: str) -> dict[str, str]:
    """The environment that runs the script with an interpreter answering the CUDA probe with yes."""
    stand_in = tmp_path / "python"
    stand_in.write_text(
        "#!/usr/bin/env bash\n"
        'if [[ "$1" == "-c" && "$2" == *"cuda.is_available"* ]]; then exit 0; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    stand_in.chmod(0o755)
    return {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": str(stand_in), **extra}


@NEEDS_SHELL
def test_gpu_check_runs_end_to_end_with_a_stand_in_interpreter(tmp_path):
    env = stand_in_env(tmp_path, RECIPE="tiny", STEPS="1", WARMUP="0", BUDGET_S="48", PEAK_TFLOPS="1")
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows)[:2] == ["eager-b32", "reference-b32"] and len(rows) == 11 and "fsdp-large-ckpt-b32" in rows
    assert "loader" in rows
    first = rows["eager-b32"]
    assert first["status"] == "ok" and first["samples_per_s"] > 0 and first["mfu"] > 0 and first["peak_memory_gib"] > 0
    assert rows["compile-ckpt-b128"]["status"] == "skipped (time budget)"
    assert "eager-b32" in done.stdout and "skipped (time budget)" in done.stdout


@NEEDS_SHELL
def test_gpu_check_refuses_a_row_it_does_not_have(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT)], env=stand_in_env(tmp_path, ROWS="eager-b32,eager-b33"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "ROWS names 'eager-b33', which is not a row" in done.stderr
    assert "loader" in done.stderr.splitlines()[-1] and not (tmp_path / "out" / "gpu_check.json").exists()


@pytest.mark.slow
@NEEDS_SHELL
def test_gpu_check_loader_row_measures_the_training_loader(tmp_path):
    env = stand_in_env(tmp_path, ROWS="eager-b64,loader", RECIPE="tiny", STEPS="1", WARMUP="0", PEAK_TFLOPS="1")
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r["name"]: r for r in json.loads((tmp_path / "out" / "gpu_check.json").read_text())["rows"]}
    assert rows["eager-b32"]["status"] == "not selected (ROWS)"
    loader = rows["loader"]["loader"]
    assert set(loader["samples_per_s"]) == {"prepared", "shards", "prepared_max320"}
    assert loader["step_rate_source"] == "--step-rate"  # the rate the eager-b64 row measured
    assert loader["step_rate"] == pytest.approx(rows["eager-b64"]["samples_per_s"], abs=0.05)
    assert all(min(by_workers.values()) > 0 for by_workers in loader["samples_per_s"].values())
    assert "stage-3 training loader" in done.stdout and "cores per GPU" in done.stdout
