"""The ``vlmo`` entry point and ``vlmo recipes``: help, listing, showing, validating, and user errors as exit code 2."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from helpers import run
from vlmo_cli.config.recipe import parse_recipe


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


def _vlmo_script() -> str:
    """The installed ``vlmo`` console script of the running interpreter's environment."""
    script = Path(sys.executable).with_name("vlmo")
    if not script.exists():
        pytest.skip(f"no installed vlmo script next to {sys.executable}")
    return str(script)


@pytest.mark.parametrize(
    "args, usage, message",
    [
        (["pretrian-vl"], "Usage: vlmo [OPTIONS] COMMAND", "No such command 'pretrian-vl'. Did you mean 'pretrain-vl'"),
        (["pretrain-vl", "tiny", "--bogus"], "Usage: vlmo pretrain-vl [OPTIONS]", "No such option: --bogus"),
        (["recipes", "lst"], "Usage: vlmo recipes [OPTIONS] COMMAND", "No such command 'lst'. Did you mean 'list'?"),
        (["eval", "vqq"], "Usage: vlmo eval [OPTIONS] COMMAND", "No such command 'vqq'. Did you mean 'vqa'?"),
        (["embed"], "Usage: vlmo embed [OPTIONS]", "Missing option '--model'"),
    ],
)
def test_usage_mistakes_print_usage_and_exit_2(args, usage, message):
    result = subprocess.run([_vlmo_script(), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert usage in result.stderr and "--help' for help." in result.stderr
    assert f"Error: {message}" in result.stderr


def test_usage_mistake_in_process_exits_2(capsys):
    code, _, err = run(capsys, "recipes", "show", "tiny", "--resolvd", "pretrain.vl")
    assert code == 2
    assert "Usage: vlmo recipes show" in err and "No such option: --resolvd" in err


def test_version_names_package_torch_and_device(capsys):
    import torch

    from vlmo_cli import __version__

    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert f"vlmo-cli {__version__}" in out and f"torch {torch.__version__}" in out
    assert ("GPU(s)" in out) if torch.cuda.is_available() else ("CPU only" in out)


def test_shell_completion_is_offered(capsys, monkeypatch):
    import typer.completion

    code, out, _ = run(capsys, "--help")
    assert code == 0 and "--install-completion" in out and "--show-completion" in out
    # typer detects the shell from the process tree, which a detached test run does not have; pretend it is bash
    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    code, out, _ = run(capsys, "--show-completion")
    assert code == 0
    assert "_vlmo_completion" in out and "complete " in out


def _leaf_commands(command, path: tuple[str, ...] = ()):
    """``(path, click command)`` of every runnable command below ``command``."""
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        yield " ".join(path), command
        return
    for name, sub in subcommands.items():
        yield from _leaf_commands(sub, (*path, name))


def test_every_command_help_shows_its_own_example_and_plain_flags(capsys):
    import shlex

    import typer.main

    from vlmo_cli.cli.app import app
    from vlmo_cli.cli.examples import EXAMPLES

    leaves = dict(_leaf_commands(typer.main.get_command(app)))
    assert len(leaves) > 20
    missing = sorted(set(leaves) - set(EXAMPLES))
    assert not missing, f"commands without an example in vlmo_cli/cli/examples.py: {missing}"
    for path, command in leaves.items():
        code, out, _ = run(capsys, *path.split(), "--help")
        assert code == 0, path
        example = EXAMPLES[path]
        assert f"Example:\n    {example}\n" in out, path
        assert f"{example} ".startswith(f"vlmo {path} "), (path, example)
        assert "<bool>" not in out, path  # flags are shown without a value type: `--overwrite`, not `--overwrite <bool>`
        args = shlex.split(example)[1 + len(path.split()):]
        command.make_context(f"vlmo {path}", args)  # the example's options are this command's own


def test_help_keeps_bracketed_section_names(capsys):
    code, out, _ = run(capsys, "eval", "vqa", "--help")
    assert code == 0
    assert "whose [eval.*] section" in out and "[eval.TASK] section" in out
    assert "whose  section" not in out


def test_flag_followed_by_a_value_is_explained(capsys):
    code, _, err = run(capsys, "recipes", "show", "tiny", "true", "--resolved", "pretrain.vl")
    assert code == 2
    assert "flags such as --overwrite take no value" in err


def test_stage_commands_follow_the_one_list():
    """pretrain-*, finetune TASK and eval TASK are the commands of config.schema.STAGES, no more, no fewer."""
    import typer.main

    from vlmo_cli.cli.app import app
    from vlmo_cli.cli.evaluate import eval_app
    from vlmo_cli.cli.finetune import Task
    from vlmo_cli.config.schema import stages_of

    commands = typer.main.get_command(app).commands
    assert [s.command for s in stages_of("pretrain")] == [n for n in commands if n.startswith("pretrain-")]
    assert [t.value for t in Task] == list(dict.fromkeys(s.command for s in stages_of("finetune")))
    assert {c.name for c in eval_app.registered_commands} == {s.command for s in stages_of("eval")}
