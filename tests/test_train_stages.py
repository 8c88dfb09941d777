"""The training engine on the demo data with the tiny recipe: every pre-training stage runs from the CLI, learns,
checkpoints atomically and resumes exactly; stage 2 leaves frozen weights untouched."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import train_values
from vlmo_cli.cli.app import main
from vlmo_cli.config.recipe import load_recipe
from vlmo_cli.train import stages as stages_module
from vlmo_cli.train.checkpoint import find_resume, list_checkpoints
from vlmo_cli.train.loop import TrainingDiverged, train
from vlmo_cli.train.monitor import read_metrics

COMMON = ["model.vocab_size=160", "train.log_every=5", "data.batch_size=16"]


def run_cli(args: list[str]) -> None:
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code in (0, None), f"vlmo {' '.join(args)} exited with {exc.code}"


def test_three_stages_from_the_cli_learn_and_chain(in_demo, tmp_path):
    runs = tmp_path / "runs"
    run_cli(["pretrain-vision", "tiny", *COMMON, *in_demo, "pretrain.vision.max_steps=30",
             "pretrain.vision.lr=2e-3", "pretrain.vision.warmup=3"])
    vision = runs / "tiny-pretrain-vision"
    mim = train_values(vision, "mim_loss")
    assert sum(mim[-2:]) < 0.93 * sum(mim[:2]), mim  # per-patch normalised pixels: 1.0 = predicting the mean

    run_cli(["pretrain-text", "tiny", *COMMON, *in_demo, "pretrain.text.max_steps=30", "pretrain.text.warmup=3",
             f"pretrain.text.init={vision}"])
    text = runs / "tiny-pretrain-text"
    mlm = train_values(text, "mlm_loss")
    assert sum(mlm[-2:]) < 0.8 * sum(mlm[:2]), mlm
    # stage 2 trains only the text side: every frozen tensor is bit-identical to stage 1's
    before = load_file(list_checkpoints(vision)[-1] / "model.safetensors")
    after = load_file(list_checkpoints(text)[-1] / "model.safetensors")
    trainable = stages_module.TEXT_STAGE_TRAINABLE
    frozen = [k for k in before if k in after and not any(t in k for t in trainable)]
    assert any("mlp_imag" in k for k in frozen) and any("attn.qkv" in k for k in frozen)
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["transformer.blocks.0.mlp_text.fc1.weight"], after["transformer.blocks.0.mlp_text.fc1.weight"])

    run_cli(["pretrain-vl", "tiny", *COMMON, *in_demo, "pretrain.vl.max_steps=60", "pretrain.vl.warmup=5",
             "pretrain.vl.lr=1e-3", f"pretrain.vl.init={text}"])
    vl = runs / "tiny-pretrain-vl"
    total, mlm_vl, itc = train_values(vl, "loss"), train_values(vl, "mlm_loss"), train_values(vl, "itc_loss")
    # from a tiny stage-2 model, ITC/ITM leave their plateau slowly (the quickstart shows them learn); MLM drops fast
    assert sum(total[-2:]) < 0.95 * sum(total[:2]), total
    assert sum(mlm_vl[-2:]) < 0.85 * sum(mlm_vl[:2]), mlm_vl
    assert sum(itc[-2:]) < sum(itc[:2]), itc
    last = list_checkpoints(vl)[-1]
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 60
    assert (last / "tokenizer.json").exists() and (vl / "recipe.toml").exists()
    assert any("val_tr_r1" in m for m in read_metrics(vl))


def _vl_stage(in_demo, tmp_path, run_name, extra=()):
    overrides = [*COMMON, *in_demo, "pretrain.vl.max_steps=4", "pretrain.vl.init=", "pretrain.vl.warmup=1",
                 f"pretrain.vl.run_name={run_name}", "data.batch_size=8", *extra]
    return load_recipe("tiny", overrides).resolve("pretrain.vl")


def test_resume_is_bit_identical_to_an_uninterrupted_run(in_demo, tmp_path):
    full = train(_vl_stage(in_demo, tmp_path, "full"))
    cut = train(_vl_stage(in_demo, tmp_path, "cut"), stop_after=2)
    assert cut.state.step == 2
    resumed = train(_vl_stage(in_demo, tmp_path, "cut"), resume="auto")
    assert resumed.state.step == 4
    a = load_file(full.checkpoint / "model.safetensors")
    b = load_file(resumed.checkpoint / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_auto_ignores_a_checkpoint_cut_off_mid_write(in_demo, tmp_path):
    result = train(_vl_stage(in_demo, tmp_path, "partial", ["pretrain.vl.max_steps=2"]))
    root = result.run_dir / "checkpoints"
    (root / "step_7").mkdir()
    (root / "step_7" / "config.json").write_text("{}")  # no weights, no state: an interrupted write
    (root / ".step_9.tmp-abc").mkdir()
    assert find_resume(result.run_dir, "auto") == root / "step_2"
    with pytest.raises(Exception, match="already holds checkpoints"):
        train(_vl_stage(in_demo, tmp_path, "partial", ["pretrain.vl.max_steps=2"]))


def test_non_finite_loss_stops_with_a_clear_message(in_demo, tmp_path, monkeypatch):
    original = stages_module.STAGE_DEFS["pretrain.vl"]

    def exploding(model, batch, task):
        out = original.objective(model, batch, task)
        return stages_module.StepOutput(out.loss * float("nan"), out.metrics)

    monkeypatch.setitem(stages_module.STAGE_DEFS, "pretrain.vl", dataclasses.replace(original, objective=exploding))
    with pytest.raises(TrainingDiverged, match="loss is nan at step 1"):
        train(_vl_stage(in_demo, tmp_path, "nan"))


def test_stage_table_holds_the_train_stages_of_the_one_list(monkeypatch):
    """train/stages.STAGE_DEFS and config.schema.STAGES agree (checked at import): a task in one and not the other
    fails, as does a different order."""
    from vlmo_cli.config.schema import STAGES as SCHEMA
    from vlmo_cli.train.stages import STAGE_DEFS, check_stage_defs

    assert list(STAGE_DEFS) == [name for name, spec in SCHEMA.items() if spec.kind == "train"]
    check_stage_defs()
    monkeypatch.delitem(STAGE_DEFS, "finetune.classify")
    with pytest.raises(AssertionError, match="finetune.classify"):
        check_stage_defs()
