"""Faults during training, driven as a user meets them: a diverging run, weights turned NaN before a checkpoint,
SIGTERM/SIGINT mid-run (a real subprocess, then ``--resume auto``), Ctrl-C elsewhere, and a full disk while a
checkpoint is written."""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import run
from vlmo_cli.objectives.matching import sample_hard_negatives
from vlmo_cli.train import checkpoint as checkpoint_module
from vlmo_cli.train import stages as stages_module
from vlmo_cli.train.checkpoint import list_checkpoints
from vlmo_cli.train.guards import last_good_checkpoint
from vlmo_cli.train.signals import StopRequest

TEXT = ["model.vocab_size=160", "data.batch_size=8", "pretrain.text.init=", "pretrain.text.warmup=1",
        "train.log_every=1"]


def _ckpt_root(tmp_path: Path, run_name: str) -> Path:
    return tmp_path / "runs" / run_name / "checkpoints"


# ---------------------------------------------------------------------- 1. a diverging run stops cleanly
def test_hard_negative_sampling_survives_nan_logits():
    logits = torch.randn(4, 4)
    logits[1, 2] = float("nan")
    neg = sample_hard_negatives(logits, logits.t().clone(), 4, generator=torch.Generator().manual_seed(0))
    assert neg.image_index.shape == (4,) and neg.text_index.shape == (4,)
    assert (neg.text_index != torch.arange(4)).all() and (neg.image_index != torch.arange(4)).all()


@pytest.mark.slow
def test_diverging_vl_run_stops_with_the_last_good_checkpoint(in_demo, tmp_path, capsys):
    code, _, err = run(capsys, "pretrain-vl", "tiny", "model.vocab_size=160", "data.batch_size=8", *in_demo,
                       "pretrain.vl.init=", "pretrain.vl.lr=1e3", "pretrain.vl.warmup=1", "pretrain.vl.max_steps=8",
                       "train.save_every=2", "train.log_every=1", "--run-name", "boom")
    assert code == 2, err
    good = _ckpt_root(tmp_path, "boom") / "step_2"
    assert "at step" in err and "stopped before the update" in err and f"Last good checkpoint: {good}" in err, err
    assert "Traceback" not in err
    assert list_checkpoints(tmp_path / "runs" / "boom") == [good]
    assert last_good_checkpoint(tmp_path / "runs" / "boom") == good


# ---------------------------------------------------------------------- 2. only finite checkpoints are good
def _poison_at_call(monkeypatch, stage: str, call: int) -> None:
    """The objective of ``stage`` writes NaN into the MLM bias on its ``call``-th call; that step's loss is finite."""
    original = stages_module.STAGE_DEFS[stage]
    calls = {"n": 0}

    def poisoning(model, batch, task):
        out = original.objective(model, batch, task)
        calls["n"] += 1
        if calls["n"] == call:
            with torch.no_grad():
                model.mlm_score.bias.fill_(float("nan"))
        return out

    monkeypatch.setitem(stages_module.STAGE_DEFS, stage, dataclasses.replace(original, objective=poisoning))


def test_a_checkpoint_with_nan_weights_is_not_written(in_demo, tmp_path, capsys, monkeypatch):
    _poison_at_call(monkeypatch, "pretrain.text", 4)
    code, _, err = run(capsys, "pretrain-text", "tiny", *TEXT, *in_demo, "pretrain.text.max_steps=6",
                       "train.save_every=2", "train.keep_last_n=0", "--run-name", "poisoned")
    root = _ckpt_root(tmp_path, "poisoned")
    assert code == 2, err
    assert "weight tensors hold NaN/inf (mlm_score.bias" in err and "this checkpoint was not written" in err, err
    assert f"Last good checkpoint: {root / 'step_2'}" in err, err
    assert [p.name for p in list_checkpoints(root.parent)] == ["step_2"]
    assert (root / "latest").read_text().strip() == "step_2"


def test_no_good_checkpoint_is_said_plainly(in_demo, tmp_path, capsys, monkeypatch):
    _poison_at_call(monkeypatch, "pretrain.text", 1)
    code, _, err = run(capsys, "pretrain-text", "tiny", *TEXT, *in_demo, "pretrain.text.max_steps=1",
                       "--run-name", "never")
    assert code == 2 and "No good checkpoint of this run exists" in err, err


def test_last_good_checkpoint_skips_one_holding_nan(in_demo, tmp_path, capsys):
    code, _, err = run(capsys, "pretrain-text", "tiny", *TEXT, *in_demo, "pretrain.text.max_steps=2",
                       "train.save_every=1", "train.keep_last_n=0", "--run-name", "older")
    assert code == 0, err
    first, second = list_checkpoints(tmp_path / "runs" / "older")
    weights = load_file(second / "model.safetensors")  # as an older version of this program could leave it
    weights["mlm_score.bias"][0] = float("inf")
    save_file(weights, str(second / "model.safetensors"))
    assert last_good_checkpoint(tmp_path / "runs" / "older") == first


# ---------------------------------------------------------------------- 3./4. signals
def _vlmo() -> str:
    script = Path(sysconfig.get_path("scripts")) / "vlmo"
    return str(script) if script.exists() else shutil.which("vlmo")


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_matches_an_uninterrupted_run(demo_root, tmp_path):
    args = [_vlmo(), "pretrain-text", "tiny", *TEXT, "pretrain.text.max_steps=12",
            f"train.output_dir={tmp_path / 'runs'}"]
    full = subprocess.run([*args, "--run-name", "full"], cwd=demo_root, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert full.returncode == 0, full.stderr

    proc = subprocess.Popen([*args, "--run-name", "cut"], cwd=demo_root, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the first steps are logged: the run is inside the loop
        if line.startswith("step 2/12"):
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    stopped = [p for p in list_checkpoints(tmp_path / "runs" / "cut")]
    assert len(stopped) == 1 and f"interrupted; last checkpoint: {stopped[0]}" in err, err
    assert "Traceback" not in err
    step = int(stopped[0].name.split("_")[1])
    assert 2 <= step < 12

    resumed = subprocess.run([*args, "--run-name", "cut", "--resume", "auto"], cwd=demo_root, env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(list_checkpoints(tmp_path / "runs" / "full")[-1] / "model.safetensors")
    b = load_file(list_checkpoints(tmp_path / "runs" / "cut")[-1] / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_first_signal_is_a_request_and_the_second_acts_at_once():
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.requested == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_elsewhere_is_one_line_and_exit_130(capsys, monkeypatch):
    import vlmo_cli.cli.recipes as recipes_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes_cli, "load_recipe", interrupted)
    code, out, err = run(capsys, "recipes", "validate", "tiny")
    assert code == 130
    assert err.strip() == "interrupted"


# ---------------------------------------------------------------------- 5. a full disk
@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file data/3: "
                 "file write failed"),
    RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 1536 vs 1424"),
])
def test_disk_full_while_writing_a_checkpoint(in_demo, tmp_path, capsys, monkeypatch, failure):
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint's training state, cut off
            Path(f).write_bytes(b"partial")
            raise failure
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    code, _, err = run(capsys, "pretrain-text", "tiny", *TEXT, *in_demo, "pretrain.text.max_steps=2",
                       "train.save_every=1", "--run-name", "full-disk")
    root = _ckpt_root(tmp_path, "full-disk")
    assert code == 2, err
    assert f"no space left on device while writing {root / 'step_2'}" in " ".join(err.split()), err
    assert "Traceback" not in err
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_1"]  # no temporary left behind
    assert (root / "latest").read_text().strip() == "step_1"
    if isinstance(failure, OSError):  # once space is free again, the kept checkpoint resumes
        monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
        code, _, err = run(capsys, "pretrain-text", "tiny", *TEXT, *in_demo, "pretrain.text.max_steps=2",
                           "--run-name", "full-disk", "--resume", "auto")
        assert code == 0, err
        assert (root / "latest").read_text().strip() == "step_2"


def test_disk_full_on_a_real_small_tmpfs(in_demo, tmp_path, capsys):
    mount = tmp_path / "small"
    mount.mkdir()
    if sys.platform != "linux" or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                                 capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        code, _, err = run(capsys, "pretrain-text", "tiny", *TEXT, "pretrain.text.max_steps=1",
                           f"train.output_dir={mount}", "--run-name", "tmpfs")
        assert code == 2, err
        assert "no space left on device while writing" in err and "Traceback" not in err, err
        root = mount / "tmpfs" / "checkpoints"
        assert not [p for p in root.iterdir() if p.name.startswith(".")]
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# ---------------------------------------------------------------------- 6. initialisation reports every tensor
def _text_stage_model_dir(tmp_path: Path, drop_block: int | None = None) -> Path:
    """A stage-2 model directory (random weights), optionally without every tensor of one backbone block."""
    from vlmo_cli.factory import save_model
    from vlmo_cli.model.vlmo import VLMo
    from vlmo_cli.config.recipe import load_recipe
    from vlmo_cli.train.stages import STAGE_DEFS, stage_model_config

    stage = load_recipe("tiny", ["model.vocab_size=160"]).resolve("pretrain.text")
    cfg = stage_model_config(STAGE_DEFS["pretrain.text"], stage.model.build_config(image_size=stage.data.image_size),
                             stage.task, text_len=stage.data.max_text_len)
    path = save_model(VLMo(cfg), tmp_path / f"src-{drop_block}")
    if drop_block is not None:
        weights = load_file(path / "model.safetensors")
        prefix = f"transformer.blocks.{drop_block}."
        save_file({k: v for k, v in weights.items() if not k.startswith(prefix)}, str(path / "model.safetensors"))
    return path


VL_ONE_STEP = ["model.vocab_size=160", "data.batch_size=4", "pretrain.vl.max_steps=1", "pretrain.vl.warmup=0"]


def test_init_missing_a_backbone_block_is_refused_naming_the_keys(in_demo, tmp_path, capsys):
    src = _text_stage_model_dir(tmp_path, drop_block=1)
    code, _, err = run(capsys, "pretrain-vl", "tiny", *VL_ONE_STEP, *in_demo, "--from", str(src), "--run-name", "m")
    assert code == 2, err
    flat = " ".join(err.split())
    assert "the source lacks" in flat and "transformer.blocks.1.attn.qkv.weight" in flat, err
    assert "--allow-missing-init" in flat and "Traceback" not in err


@pytest.mark.slow
def test_allow_missing_init_trains_and_logs_what_was_fresh(in_demo, tmp_path, capsys):
    import json

    src = _text_stage_model_dir(tmp_path, drop_block=1)
    code, out, err = run(capsys, "pretrain-vl", "tiny", *VL_ONE_STEP, *in_demo, "--from", str(src),
                         "--run-name", "allowed", "--allow-missing-init")
    assert code == 0, err
    assert "--allow-missing-init" in out
    report = json.loads((tmp_path / "runs" / "allowed" / "init.json").read_text())
    assert report["source"] == str(src)
    assert report["allowed_missing"] and all(k.startswith("transformer.blocks.1.") for k in report["allowed_missing"])
    assert "transformer.blocks.1.attn.qkv.weight" in report["allowed_missing"]
    assert "transformer.blocks.0.attn.qkv.weight" in report["loaded"]
    assert set(report["allowed_missing"]) <= set(report["fresh"])


def test_a_complete_source_reports_exactly_the_expected_fresh_tensors(tmp_path):
    from vlmo_cli.model.vlmo import VLMo
    from vlmo_cli.config.recipe import load_recipe
    from vlmo_cli.train.init import initialise
    from vlmo_cli.train.stages import STAGE_DEFS, stage_model_config

    src = _text_stage_model_dir(tmp_path)
    stage = load_recipe("tiny", ["model.vocab_size=160"]).resolve("pretrain.vl")
    cfg = stage_model_config(STAGE_DEFS["pretrain.vl"], stage.model.build_config(image_size=stage.data.image_size),
                             stage.task, text_len=stage.data.max_text_len)
    model = VLMo(cfg)
    report = initialise(model, str(src), "random")
    own = set(model.state_dict())
    assert set(report.loaded) | set(report.fresh) == own and not set(report.loaded) & set(report.fresh)
    assert not report.allowed_missing
    fresh_groups = {k.split(".")[3] if k.startswith("transformer.blocks.") else k.split(".")[0] for k in report.fresh}
    assert fresh_groups == {"mlp_vl", "norm2_vl", "itc_image_proj", "itc_text_proj", "itc_vl_image_proj",
                            "itc_vl_text_proj", "itm_score", "logit_scale", "logit_vl_scale"}
    copied = initialise(VLMo(cfg), str(src), "text")
    assert copied.copied and all("_vl." in k and "_text." in v for k, v in copied.copied.items())
    assert not any("_vl." in k for k in copied.fresh)


def test_data_loader_workers_leave_the_stop_signals_to_the_training_process():
    code = ("import signal; from vlmo_cli.data.loader import _seed_worker; _seed_worker(0); "
            "print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN, signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True"], out.stderr


# ---------------------------------------------------------------------- 7. a training state that is not just tensors
class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_refuses_a_code_executing_or_corrupt_training_state(in_demo, tmp_path, capsys):
    code, _, err = run(capsys, "pretrain-text", "tiny", *TEXT, *in_demo, "pretrain.text.max_steps=2",
                       "--run-name", "tampered")
    assert code == 0, err
    state_file = list_checkpoints(tmp_path / "runs" / "tampered")[-1] / "training_state.pt"
    marker = tmp_path / "code-ran"
    torch.save({"optimizer": _RunsCode(marker), "rng": {}}, state_file)
    resume = ["pretrain-text", "tiny", *TEXT, *in_demo, "pretrain.text.max_steps=3", "--run-name", "tampered",
              "--resume", "auto"]
    code, _, err = run(capsys, *resume)
    flat = " ".join(err.split())
    assert code == 2, err
    assert f"{state_file}: refused: this file needs code execution to load (pickle); not loaded" in flat, err
    assert "safe_globals" not in flat and "weights_only" not in flat and not marker.exists()

    state_file.write_bytes(state_file.read_bytes()[:200])
    code, _, err = run(capsys, *resume)
    flat = " ".join(err.split())
    assert code == 2 and f"{state_file}: corrupt" in flat and "Traceback" not in err, err
