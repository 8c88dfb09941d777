"""``vlmo model info`` describes exactly the model a recipe stage trains or a saved model holds; config.json fields
are type-checked when loaded (a wrong type is one message naming the file and the field, exit 2)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from helpers import run
from vlmo_cli.data.store import open_prepared
from vlmo_cli.model.config import get_config
from vlmo_cli.factory import load_model, save_model
from vlmo_cli.model.vlmo import VLMo

TINY_RECIPE = Path(__file__).resolve().parents[1] / "vlmo_cli" / "recipes" / "tiny.toml"


def _info(capsys, *args: str) -> tuple[int, str]:
    code, out, err = run(capsys, "model", "info", *args)
    assert code == 0, err
    return int(re.search(r"total\D*([\d,]+)", out).group(1).replace(",", "")), out


@pytest.fixture(scope="module")
def trained_run(demo_root, tmp_path_factory):
    """The tiny recipe's stage 3 as the training loop builds and saves it (one optimizer step, then stopped)."""
    from vlmo_cli.config.recipe import load_recipe
    from vlmo_cli.train.loop import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny-pretrain-vl"
    stage = load_recipe("tiny", ["pretrain.vl.init=", "pretrain.vl.max_steps=2", "pretrain.vl.warmup=0",
                                 "data.batch_size=4"]).resolve("pretrain.vl")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(demo_root)
        train(stage, run_dir=run_dir, stop_after=1)  # stopping before the last step skips the final validation
    return run_dir


@pytest.mark.slow
def test_recipe_and_run_describe_the_trained_model(trained_run, capsys):
    trained = sum(p.numel() for p in load_model(trained_run).parameters())
    assert 1_700_000 < trained < 1_800_000  # the recipe's vocabulary (160) and text length (16), not the size's
    by_name, out = _info(capsys, "tiny")
    assert "tiny [pretrain.vl]" in out and "text length 16" in out
    assert by_name == trained
    assert _info(capsys, str(TINY_RECIPE))[0] == trained
    assert _info(capsys, str(trained_run))[0] == trained
    step = next((trained_run / "checkpoints").glob("step_*"))
    assert _info(capsys, str(step))[0] == trained
    code, _, err = run(capsys, "model", "info", str(trained_run), "--stage", "finetune.vqa")
    assert code == 2 and "overrides and --stage apply to recipes" in err


def test_stage_option_uses_the_prepared_dataset_for_head_sizes(demo_root, monkeypatch, capsys):
    monkeypatch.chdir(demo_root)
    answers = len(open_prepared("demo_data/vqa").answers)
    total, out = _info(capsys, "tiny", "--stage", "finetune.vqa")
    assert "tiny [finetune.vqa]" in out
    recipe_vl = _info(capsys, "tiny", "--stage", "pretrain.vl")[0]
    assert total != recipe_vl and answers > 0
    width = get_config("tiny").embed_dim
    hidden = 2 * width  # the VQA classifier: Linear(D, 2D), LayerNorm(2D), Linear(2D, answers)
    head = (width * hidden + hidden) + 2 * hidden + (hidden * answers + answers)
    assert f"{head:,}" in out


def _model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_model(VLMo(get_config("tiny", vocab_size=200)), tmp_path / "model")


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("depth", "4", "field 'depth' must be an integer, got '4'"),
    ("relative_position", "yes", "field 'relative_position' must be true or false, got 'yes'"),
    ("heads", "itc", "field 'heads' must be a list of strings, got 'itc'"),
    ("layer_scale_init", [0.1], "field 'layer_scale_init' must be a number or null, got [0.1]"),
])
def test_wrongly_typed_config_field_is_named_by_export(tmp_path, capsys, field, value, expected):
    model = _model_dir(tmp_path)
    config = model / "config.json"
    data = json.loads(config.read_text())
    data[field] = value
    config.write_text(json.dumps(data))
    code, _, err = run(capsys, "export", str(model), str(tmp_path / "out"))
    message = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert f"{config}: {expected}" in message


def test_wrongly_typed_config_field_is_named_by_from(tmp_path, demo_root, monkeypatch, capsys):
    model = _model_dir(tmp_path)
    config = model / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "embed_dim": 128.5}))
    monkeypatch.chdir(demo_root)
    code, _, err = run(capsys, "pretrain-vl", "tiny", "--from", str(model), f"train.output_dir={tmp_path / 'runs'}",
                       "pretrain.vl.max_steps=1")
    assert code == 2
    assert f"{config}: field 'embed_dim' must be an integer, got 128.5" in " ".join(err.split())


def test_integral_float_fields_load_as_floats(tmp_path):
    model = _model_dir(tmp_path)
    config = model / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "mlp_ratio": 4, "drop_path_rate": 0}))
    cfg = load_model(model).config
    assert cfg.mlp_ratio == 4.0 and isinstance(cfg.mlp_ratio, float) and isinstance(cfg.drop_path_rate, float)
