"""End to end on one machine the way a multi-node job starts: ``torchrun --nnodes 1 --nproc_per_node 2`` with a c10d
rendezvous on 127.0.0.1, and ``accelerate launch --multi_gpu --num_machines 1 --main_process_ip 127.0.0.1`` (CPU,
gloo). Stage 3
(ITC over features gathered from both processes, hard negatives exchanged between them) trains under DDP and under
FSDP (``train.fsdp=true``); the two give the same losses and weights within fp32 tolerance, and an FSDP run resumed
with ``--resume auto`` from its step-2 checkpoint ends bit-identical to the uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_train_distributed import _free_port

pytestmark = pytest.mark.slow

STEPS = 4
ARGS = ["pretrain-vl", "tiny", f"pretrain.vl.max_steps={STEPS}", "pretrain.vl.init=", "train.log_every=1",
        "data.batch_size=8", "train.save_every=2", "train.keep_last_n=0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def torchrun(demo_root, runs, name: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{_free_port()}", "-m", "vlmo_cli", *ARGS,
           f"train.output_dir={runs}", "--run-name", name, *extra]
    proc = subprocess.run(cmd, cwd=demo_root, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) × 4" in " ".join(proc.stdout.split())  # global batch 8 = 2 processes × 4
    return proc


def losses(run) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "itc_loss" in r]


def weights(run, step: int = STEPS) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step}" / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(demo_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    torchrun(demo_root, runs, "fsdp", "train.fsdp=true")
    torchrun(demo_root, runs, "ddp")
    shutil.copytree(runs / "fsdp", runs / "fsdp-resumed")
    shutil.rmtree(runs / "fsdp-resumed" / "checkpoints" / f"step_{STEPS}")  # as if it stopped after step 2
    resumed = torchrun(demo_root, runs, "fsdp-resumed", "train.fsdp=true", "--resume", "auto")
    return runs, resumed


def test_fsdp_and_ddp_give_the_same_losses_and_weights(runs):
    root, _ = runs
    fsdp, ddp = losses(root / "fsdp"), losses(root / "ddp")
    assert [s for s, _ in fsdp] == list(range(1, STEPS + 1))
    assert [s for s, _ in fsdp] == [s for s, _ in ddp]
    assert [v for _, v in fsdp] == pytest.approx([v for _, v in ddp], rel=1e-5)
    a, b = weights(root / "fsdp"), weights(root / "ddp")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k  # the temperatures stay scalars in the checkpoint
        torch.testing.assert_close(a[k], b[k], atol=5e-5, rtol=1e-4, msg=k)


def test_fsdp_resume_is_exact(runs):
    root, resumed = runs
    assert "resumed from" in resumed.stdout and "step_2" in resumed.stdout
    assert losses(root / "fsdp-resumed") == losses(root / "fsdp")
    a, b = weights(root / "fsdp-resumed"), weights(root / "fsdp")
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run ended with other weights"
    state = torch.load(root / "fsdp" / "checkpoints" / "step_2" / "training_state.pt", weights_only=True)
    assert state["optimizer"]["layout"] == "by_name"


def test_accelerate_launch_with_two_processes(demo_root, tmp_path):
    """The README's multi-node ``accelerate launch`` line with one machine. ``--multi_gpu`` also starts CPU processes
    (torchrun underneath, gloo); ``--cpu --num_processes 2`` would start ONE process (Accelerate leaves multi-CPU
    launches to mpirun)."""
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--machine_rank", "0", "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
           "-m", "vlmo_cli", "pretrain-vl", "tiny", "pretrain.vl.max_steps=2", "pretrain.vl.init=",
           "train.log_every=1", "data.batch_size=8", f"train.output_dir={runs}", "--run-name", "acc"]
    proc = subprocess.run(cmd, cwd=demo_root, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) × 4" in " ".join(proc.stdout.split())
    assert (runs / "acc" / "checkpoints" / "latest").read_text().strip() == "step_2"
    assert [s for s, _ in losses(runs / "acc")] == [1, 2]
