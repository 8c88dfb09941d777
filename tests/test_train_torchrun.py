"""The real training loop under ``torchrun`` with 2 CPU processes (gloo): DDP is set up, the global batch is split,
validation on the main process does not wait for the others, and one checkpoint is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_pretrain_vl_with_two_processes(demo_root, tmp_path):
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vlmo_cli", "pretrain-vl", "tiny", "pretrain.vl.max_steps=3", "pretrain.vl.init=",
           "train.log_every=1", "data.batch_size=8", f"train.output_dir={runs}", "--run-name", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=demo_root, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) × 4" in " ".join(proc.stdout.split())  # global batch 8 = 2 processes × 4
    run = runs / "ddp"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_3"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "itc_loss" in r] == [1, 2, 3]  # logged once (main process), every step
    assert any("val_loss" in r for r in records)
    assert proc.stdout.count("done: 3 steps") == 1
