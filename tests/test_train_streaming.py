"""Training stages fed from webdataset shards: the tiny stage 3 from shards learns its steps, reports skipped samples
in metrics.jsonl, and a run cut mid-epoch (or in its second epoch) resumes bit-identically, with 0 and 2 workers;
two torchrun processes train from disjoint shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from vlmo_cli.config.recipe import load_recipe
from vlmo_cli.train.loop import train
from vlmo_cli.train.monitor import read_metrics

from test_data_streaming import write_test_shards


def _stage(demo_root, tmp_path, shards, run_name, extra=()):
    overrides = ["model.vocab_size=160", f"train.output_dir={tmp_path / 'runs'}", "train.trackers=[]",
                 f"pretrain.vl.dataset={shards}/{{00000..00003}}.tar", "pretrain.vl.init=",
                 f"data.tokenizer={demo_root / 'demo_data' / 'tokenizer'}", "data.batch_size=8",
                 "data.stream_shuffle_buffer=5", "pretrain.vl.max_steps=5", "pretrain.vl.warmup=1",
                 "train.log_every=1", f"pretrain.vl.run_name={run_name}", *extra]
    return load_recipe("tiny", overrides).resolve("pretrain.vl")


@pytest.mark.slow  # four short tiny runs: ~40 s on an idle 2-core machine
@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_stage3_resumes_bit_identically(demo_root, tmp_path, workers):
    # 4 shards x 6 samples, one corrupt: batches of 8 from 24 - 1 samples; an epoch holds 2 batches per stream
    shards = write_test_shards(tmp_path / "wds", 4, 6, damage={(2, 3): "bad_jpeg"})
    extra = [f"data.num_workers={workers}"]
    full = train(_stage(demo_root, tmp_path, shards, "full", extra))
    assert full.state.step == 5 and full.state.epoch >= 1  # crossed into a second epoch
    rows = [m for m in read_metrics(full.run_dir) if "loss" in m]
    assert [m["step"] for m in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["stream_bad_samples"] >= 1 and rows[-1]["stream_bad_shards"] == 0
    assert any("unusable sample(s) skipped" in n for n in full.notes)
    for cut_at in (1, 3):  # mid first epoch; inside the second epoch
        name = f"cut{cut_at}"
        cut = train(_stage(demo_root, tmp_path, shards, name, extra), stop_after=cut_at)
        assert cut.state.step == cut_at and cut.state.stream["ranks"][0]["positions"]
        resumed = train(_stage(demo_root, tmp_path, shards, name, extra), resume="auto")
        assert resumed.state.step == 5
        a = load_file(full.checkpoint / "model.safetensors")
        b = load_file(resumed.checkpoint / "model.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (cut_at, k)
        assert [m["loss"] for m in read_metrics(resumed.run_dir) if "loss" in m] == [m["loss"] for m in rows]


@pytest.mark.slow  # two torchrun processes: ~40 s
def test_two_torchrun_processes_train_from_disjoint_shards(demo_root, tmp_path):
    shards = write_test_shards(tmp_path / "wds", 4, 8)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vlmo_cli", "pretrain-vl", "tiny", "pretrain.vl.max_steps=3", "pretrain.vl.init=",
           f"pretrain.vl.dataset={shards}/{{00000..00003}}.tar", f"data.tokenizer={demo_root}/demo_data/tokenizer",
           "train.log_every=1", "train.save_every=2", "train.keep_last_n=0", "data.batch_size=8",
           f"train.output_dir={runs}", "train.trackers=[]", "--run-name", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=demo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = json.loads((runs / "ddp" / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    ranks = state["stream"]["ranks"]
    assert state["stream"]["world_size"] == 2 and len(ranks) == 2
    assert all(r["positions"]["0"]["batches"] == 2 for r in ranks)  # both processes took 2 batches of 4
    records = [json.loads(line) for line in (runs / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "itc_loss" in r] == [1, 2, 3]
    assert all(r["stream_bad_samples"] == 0 for r in records if "itc_loss" in r)


@pytest.mark.slow  # three 2-step tiny runs: ~30 s
@pytest.mark.parametrize("stage", ["pretrain.vision", "pretrain.text", "finetune.retrieval_coco"])
def test_other_stages_train_from_shards(demo_root, tmp_path, stage):
    shards = write_test_shards(tmp_path / "wds", 2, 12)
    overrides = ["model.vocab_size=160", f"train.output_dir={tmp_path / 'runs'}", "train.trackers=[]",
                 f"{stage}.dataset={shards}/{{00000..00001}}.tar", f"{stage}.init=",
                 f"data.tokenizer={demo_root / 'demo_data' / 'tokenizer'}", "data.batch_size=8",
                 f"{stage}.max_steps=2", f"{stage}.warmup=1", "train.log_every=1"]
    result = train(load_recipe("tiny", overrides).resolve(stage))
    assert result.state.step == 2 and result.state.stream["ranks"][0]["positions"]
    rows = [m for m in read_metrics(result.run_dir) if "loss" in m]
    assert [m["step"] for m in rows] == [1, 2] and all(m["stream_bad_samples"] == 0 for m in rows)
