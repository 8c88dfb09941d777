"""``vlmo pretrain-mdm`` on a BEiT-3 model (``[model] family = "beit3"``): the shared masked-data-modelling objective
runs through BEiT-3's paths (image first, padding mask) with the model's own ``mlm`` and ``mim`` heads; exactly the
parameters some part reaches train (DDP needs a gradient for each); the command trains, saves a BEiT-3 model
directory, resumes exactly and runs under two processes; fine-tuning starts from it and drops the pre-training
heads; ``vlmo quickstart --family beit3`` runs the lifecycle."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import assert_ddp_equals_one_process, mixed_batch, run, train_values
from safetensors.torch import load_file

from vlmo_cli.config.recipe import load_recipe
from vlmo_cli.data.mixed import split_parts
from vlmo_cli.model.beit3 import Beit3
from vlmo_cli.model.beit3_config import Beit3Config
from vlmo_cli.train.beit3_stages import BEIT3_STAGE_DEFS, beit3_mdm_trainable
from vlmo_cli.train.build import build_stage
from vlmo_cli.train.loop import train
from vlmo_cli.train.monitor import read_metrics


def mdm_stage(overrides=(), in_demo=()):
    return load_recipe("beit3_tiny", ["data.batch_size=8", *in_demo, *overrides]).resolve("pretrain.mdm")


def _small(overrides=()):
    """The BEiT-3 stage at a test size: 2 blocks of width 32, a 64-token vocabulary."""
    return mdm_stage(["model.embed_dim=32", "model.num_heads=4", "model.ffn_dim=64", "model.depth=2",
                      "model.vocab_size=64", *overrides])


def _parts(overrides=()):
    torch.manual_seed(0)
    return build_stage(_small(overrides), torch.device("cpu"), lambda: None)


# ---------------------------------------------------------------------- the model and its heads
def test_the_stage_builds_a_beit3_with_pixel_or_teacher_heads(tmp_path):
    parts = _parts()
    model, cfg = parts.model, parts.cfg
    assert isinstance(model, Beit3) and cfg.heads == ["mlm", "mim"] and cfg.init == "torchscale"
    assert model.mlm_head.out_features == 64 and model.mim_head.out_features == 8 * 8 * 3
    assert parts.stage_def is BEIT3_STAGE_DEFS["pretrain.mdm"]
    cfg.replace(heads=[]).save(tmp_path / "config.json")  # a BEiT-3 teacher of width 32 on the same patch grid
    from safetensors.torch import save_file

    save_file(Beit3(cfg.replace(heads=[])).state_dict(), str(tmp_path / "model.safetensors"))
    with_teacher = _small(["pretrain.mdm.target=teacher", f"pretrain.mdm.teacher={tmp_path}", "model.embed_dim=48"])
    student = build_stage(with_teacher, torch.device("cpu"), lambda: None)
    assert student.model.mim_head.out_features == 32  # the teacher's width
    out = student.stage_def.objective(student.model, mixed_batch(), with_teacher.task)
    assert 0 < float(out.metrics["mdm_image_loss"]) < 2  # 1 - cos


def test_visual_token_targets_size_the_head_to_the_codebook(tmp_path):
    from helpers import vqkd_dir

    stage = _small(["pretrain.mdm.target=vqkd", f"pretrain.mdm.visual_tokenizer={vqkd_dir(tmp_path)}"])
    parts = build_stage(stage, torch.device("cpu"), lambda: None)
    assert parts.model.mim_head.out_features == 64  # the fixture tokenizer's codebook
    out = parts.stage_def.objective(parts.model, mixed_batch(), stage.task)
    assert {"mdm_image_acc", "mdm_pair_image_acc"} <= set(out.metrics)
    assert float(out.metrics["mdm_image_loss"]) == pytest.approx(float(torch.log(torch.tensor(64.0))), rel=0.3)


def test_the_objective_reports_every_part_through_beit3_s_paths():
    parts = _parts()
    out = parts.stage_def.objective(parts.model, mixed_batch(), _small().task)
    assert set(out.metrics) == {"mdm_image_loss", "mdm_text_loss", "mdm_text_acc", "mdm_pair_loss", "mdm_pair_acc",
                                "mdm_pair_image_loss"}
    assert torch.allclose(out.loss, sum(out.metrics[k] for k in ("mdm_image_loss", "mdm_text_loss", "mdm_pair_loss",
                                                                 "mdm_pair_image_loss")))
    assert float(out.metrics["mdm_text_loss"]) == pytest.approx(float(torch.log(torch.tensor(64.0))), rel=0.3)


def test_text_padding_stays_padding():
    """BEiT-3 takes a padding mask (1 − attention mask): changing the ids under padding changes no real token."""
    from vlmo_cli.model.family import masked_data_view

    view = masked_data_view(_parts().model.eval())
    text = split_parts(mixed_batch())["text"]
    changed = text["mlm_input_ids"].masked_fill(text["attention_mask"] == 0, 7)
    with torch.no_grad():
        a = view.text_tokens(text["mlm_input_ids"], text["attention_mask"])
        b = view.text_tokens(changed, text["attention_mask"])
    real = text["attention_mask"].bool()
    torch.testing.assert_close(a[real], b[real])


MIXES = {
    "all": [],
    "texts and images": ["pretrain.mdm.pair_fraction=0", "pretrain.mdm.pair_dataset=[]",
                         "pretrain.mdm.image_fraction=0.5", "pretrain.mdm.text_fraction=0.5"],
    "texts only": ["pretrain.mdm.pair_fraction=0", "pretrain.mdm.pair_dataset=[]", "pretrain.mdm.image_fraction=0",
                   "pretrain.mdm.image_dataset=[]", "pretrain.mdm.text_fraction=1"],
    "images only": ["pretrain.mdm.pair_fraction=0", "pretrain.mdm.pair_dataset=[]", "pretrain.mdm.text_fraction=0",
                    "pretrain.mdm.text_dataset=[]", "pretrain.mdm.image_fraction=1"],
    "whole pairs only": ["pretrain.mdm.image_fraction=0", "pretrain.mdm.image_dataset=[]",
                         "pretrain.mdm.text_fraction=0", "pretrain.mdm.text_dataset=[]", "pretrain.mdm.pair_fraction=1",
                         "pretrain.mdm.pair_image_mask_ratio=0"],
}


@pytest.mark.parametrize("mix", list(MIXES))
def test_exactly_the_parameters_the_parts_reach_train(mix):
    """Trainable = receives a gradient from a batch of the parts in use (DDP fails on a trained parameter without
    one, and a frozen one that the loss reaches would silently not learn)."""
    parts = _parts(MIXES[mix])
    task = _small(MIXES[mix]).task
    batch = {k: v for k, v in mixed_batch().items() if task.fractions[k.split(".")[0]] > 0}
    if task.pair_image_mask_ratio == 0:
        batch.pop("pair.patch_mask", None)
    parts.model.zero_grad()
    parts.stage_def.objective(parts.model, batch, task).loss.backward()
    reached = {n for n, p in parts.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in parts.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in parts.model.named_parameters() if beit3_mdm_trainable(n, parts.cfg, task)}
    # the position tables' unused leading rows get no gradient in any mix: compare whole tensors that are reached
    assert reached <= trainable
    missing = trainable - reached
    assert not missing, sorted(missing)


def _stage_module():
    return _parts().module


@pytest.mark.slow  # two spawned interpreters importing torch
def test_two_gloo_processes_compute_the_single_process_gradients(tmp_path):
    assert_ddp_equals_one_process(_stage_module, mixed_batch, tmp_path)


# ---------------------------------------------------------------------- the command
def test_pretrain_mdm_saves_a_beit3_that_fine_tuning_starts_from(in_demo, tmp_path, capsys):
    code, out, err = run(capsys, "pretrain-mdm", "beit3_tiny", *in_demo, "data.batch_size=8",
                         "pretrain.mdm.max_steps=2", "pretrain.mdm.val_split=none")
    assert code == 0, out + err
    run_dir = tmp_path / "runs" / "beit3-tiny-pretrain-mdm"
    saved = json.loads((run_dir / "checkpoints" / "step_2" / "config.json").read_text())
    assert saved["family"] == "beit3" and saved["heads"] == ["mlm", "mim"] and saved["init"] == "torchscale"
    assert {"mdm_text_loss", "mdm_pair_loss", "mdm_image_loss"} <= set(read_metrics(run_dir)[-1])
    code, out, err = run(capsys, "finetune", "vqa", "beit3_tiny", *in_demo, "--from", str(run_dir),
                         "data.batch_size=8", "finetune.vqa.max_steps=1", "finetune.vqa.val_split=none")
    text = " ".join(out.split())
    assert code == 0, out + err
    assert "initialised from" in text and "not used by this stage: 8 tensors (encoder, mim_head, mlm_head)" in text, text


@pytest.mark.slow  # ~35 s on an idle 2-core machine
def test_the_shipped_section_learns_every_part(in_demo, tmp_path, capsys):
    """``vlmo pretrain-mdm beit3_tiny`` as shipped (200 steps of 32): every loss falls and the masked-token
    accuracies beat always answering the most frequent masked token (0.154 of the texts', 0.130 of the pairs')."""
    code, out, err = run(capsys, "pretrain-mdm", "beit3_tiny", *in_demo)
    assert code == 0, out + err
    run_dir = tmp_path / "runs" / "beit3-tiny-pretrain-mdm"
    for key in ("mdm_image_loss", "mdm_text_loss", "mdm_pair_loss"):
        values = train_values(run_dir, key)
        assert len(values) == 10 and values[-1] < 0.9 * values[0], (key, values)
    final = read_metrics(run_dir)[-1]
    print("beit3 mdm:", {k: round(v, 3) for k, v in final.items() if k.startswith("val_")})
    assert final["val_mdm_text_acc"] > 2 * 0.154 and final["val_mdm_pair_acc"] > 2 * 0.130, final


@pytest.mark.slow  # three short runs
def test_resume_auto_equals_the_uninterrupted_run(in_demo):
    common = ["pretrain.mdm.max_steps=4", "pretrain.mdm.warmup=1", "pretrain.mdm.pair_image_mask_ratio=0.4"]
    full = train(mdm_stage([*common, "pretrain.mdm.run_name=full"], in_demo))
    cut = train(mdm_stage([*common, "pretrain.mdm.run_name=cut"], in_demo), stop_after=2)
    assert cut.state.step == 2
    resumed = train(mdm_stage([*common, "pretrain.mdm.run_name=cut"], in_demo), resume="auto")
    a, b = load_file(full.checkpoint / "model.safetensors"), load_file(resumed.checkpoint / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("mim_head.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert train_values(full.run_dir, "loss") == train_values(resumed.run_dir, "loss")


@pytest.mark.slow  # two torchrun processes
def test_pretrain_mdm_of_beit3_under_torchrun_with_two_processes(demo_root, tmp_path):
    """The real loop under DDP (gloo), texts only: the vision side is frozen, so DDP's check that every trained
    parameter gets a gradient holds."""
    runs = tmp_path / "runs"
    texts_only = ["pretrain.mdm.pair_fraction=0", "pretrain.mdm.pair_dataset=[]", "pretrain.mdm.image_fraction=0",
                  "pretrain.mdm.image_dataset=[]", "pretrain.mdm.text_fraction=1"]
    for name, mix in (("all", []), ("texts", texts_only)):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "vlmo_cli", "pretrain-mdm", "beit3_tiny", "pretrain.mdm.max_steps=3", "train.log_every=1",
               "data.batch_size=16", f"train.output_dir={runs}", "--run-name", name, *mix]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        proc = subprocess.run(cmd, cwd=demo_root, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "2 process(es) × 8" in " ".join(proc.stdout.split())
        assert (runs / name / "checkpoints" / "latest").read_text().strip() == "step_3"


@pytest.mark.slow  # ~2 min on an idle 2-core machine
def test_quickstart_runs_the_beit3_lifecycle(tmp_path, capsys):
    code, out, err = run(capsys, "quickstart", "--family", "beit3", "--out", str(tmp_path / "qs"))
    assert code == 0, out[-3000:] + err[-3000:]
    summary = json.loads((tmp_path / "qs" / "quickstart.json").read_text())
    assert summary["family"] == "beit3"
    commands = [s["command"] for s in summary["steps"]]
    assert commands[1].startswith("vlmo pretrain-mdm beit3_tiny")
    assert all("--from runs/beit3-tiny-pretrain-mdm" in c for c in commands if c.startswith("vlmo finetune"))
    cfg = Beit3Config.load(tmp_path / "qs" / "exported" / "beit3-tiny-retrieval" / "config.json")
    assert cfg.heads == ["retrieval"]
    print("beit3 quickstart:", summary["metrics"], "baselines:", summary["baselines"])
    # masked data modelling helps VQA clearly over the majority answer (random weights stay below it)
    assert summary["metrics"]["vqa accuracy"] > summary["baselines"]["vqa accuracy"] + 3


def test_an_unknown_family_is_one_message_exit_2(tmp_path, capsys):
    code, out, err = run(capsys, "quickstart", "--family", "clip", "--out", str(tmp_path / "qs"))
    assert code == 2 and "Traceback" not in err and "clip" in err
    assert not (tmp_path / "qs").exists()
