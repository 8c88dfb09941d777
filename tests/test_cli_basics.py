"""The ``vlmo`` entry point and ``vlmo recipes``: help, listing, showing, validating, and user errors as exit code 2."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from helpers import run
from vlmo_cli.recipe import parse_recipe


def test_help_lists_the_recipes_group(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "recipes" in out and "Usage" in out


def test_python_dash_m_help():
    result = subprocess.run(
        [sys.executable, "-m", "vlmo_cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "recipes" in result.stdout


def test_recipes_list(capsys):
    code, out, _ = run(capsys, "recipes", "list")
    assert code == 0
    for name in ("tiny", "base", "base_plus", "large"):
        assert name in out
    assert "VLMo-tiny" in out


def test_recipes_show_prints_the_file(capsys):
    code, out, _ = run(capsys, "recipes", "show", "tiny")
    assert code == 0
    assert out.startswith("# VLMo-tiny")
    assert tomllib.loads(out)["model"]["size"] == "tiny"


def test_recipes_show_resolved_with_overrides(capsys):
    code, out, _ = run(capsys, "recipes", "show", "tiny", "train.seed=7", "--resolved", "pretrain.vl")
    assert code == 0
    stage = parse_recipe(out).resolve("pretrain.vl")
    assert stage.train.seed == 7 and stage.train.lr == 5e-4 and stage.data.image_size == 32


def test_recipes_validate_ok_and_failures(capsys, tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[model]\nsize = "tiny"\n[data]\nbatch_size = 4\n[train]\nlr = 1e-3\nmax_steps = 2\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nsize = "tiny"\n[train]\nlrr = 1e-3\nprecision = "fp8"\n')
    code, out, _ = run(capsys, "recipes", "validate", "tiny", str(good))
    assert code == 0
    assert out.count("OK") == 2
    code, out, err = run(capsys, "recipes", "validate", str(good), str(bad))
    assert code == 2
    assert "OK" in out and "good.toml" in out
    assert "bad.toml: 2 problems" in err
    assert 'train.lrr: unknown key in [train] (did you mean "lr"?)' in err
    assert 'train.precision: got "fp8"' in err


@pytest.mark.parametrize(
    "args, expected",
    [
        (["recipes", "show", "BAD", "--resolved", "pretrain.vl"], "invalid TOML at line 2, column 8: Invalid value"),
        (["recipes", "show", "tiny", "--resolved", "pretrain.vv"], 'did you mean "pretrain.vl"?'),
        (["recipes", "show", "tiny", "train.lr=fast"], 'train.lr: got "fast"; expected a number'),
        (["recipes", "show", "no-such-recipe"], "no recipe file 'no-such-recipe'"),
    ],
)
def test_user_errors_exit_2_with_one_readable_message(capsys, tmp_path, args, expected):
    bad = tmp_path / "broken.toml"
    bad.write_text('[model]\nsize = \n')
    args = [str(bad) if a == "BAD" else a for a in args]
    code, out, err = run(capsys, *args)
    assert code == 2
    assert "Traceback" not in out + err
    assert err.startswith("error: ")
    assert expected in err


def test_error_message_keeps_section_names_in_brackets(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nsize = "tiny"\n[train]\nlrr = 1\n')
    code, _, err = run(capsys, "recipes", "show", str(bad), "--resolved", "pretrain.vl")
    assert code == 2
    assert 'unknown key in [train] (did you mean "lr"?)' in err
