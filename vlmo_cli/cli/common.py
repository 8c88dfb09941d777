"""Shared pieces of the commands: running an app with the error → exit-code mapping, recipe loading and the run
options every stage takes."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from ..errors import VlmoError
from ..train.signals import TrainingInterrupted

console = Console()
err_console = Console(stderr=True)


def _usage_error_class() -> type[Exception]:
    """The ``ClickException`` class of the click that Typer runs on (its own bundled copy or the ``click`` package):
    the base of every usage mistake (unknown command or option, missing argument, bad value)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


USAGE_ERROR = _usage_error_class()


def invoke(app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run ``app`` on ``argv``: user errors become one readable line and exit code 2, a run stopped by a signal
    exits 128 + its number, any other failure keeps its traceback."""
    try:
        rc = app(args=argv, prog_name="vlmo", standalone_mode=False)
    except VlmoError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True, emoji=False)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except TrainingInterrupted as exc:  # stopped by a signal after writing a checkpoint
        err_console.print(escape(str(exc)), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except USAGE_ERROR as exc:  # a usage mistake: click's usage line, "Try 'vlmo … --help'" and the error
        exc.show()
        sys.exit(2)
    if isinstance(rc, int) and rc:
        if rc == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into a silent exit code 130
            err_console.print("interrupted")
        sys.exit(rc)

RecipeArg = typer.Argument(..., help="a recipe file or a shipped name (tiny, base, base_plus, large)")
OverridesArg = typer.Argument(None, help="recipe overrides key.path=value, e.g. train.lr=1e-4 data.batch_size=64")
ResumeOpt = typer.Option("", "--resume", help='"auto" (newest complete checkpoint of the run folder) or a checkpoint path')
InitOpt = typer.Option(None, "--from", "--init", help="start from a model dir / run folder / official .pt / beit:PATH "
                       "(BEiT-3 recipes: a BEiT-3 model dir / run folder / beit3:PATH)")
RunNameOpt = typer.Option(None, "--run-name", help="run folder name under train.output_dir")
OverwriteOpt = typer.Option(False, "--overwrite", help="replace the previous run in the run folder (only a run folder)")
TakeOverLockOpt = typer.Option(
    False, "--take-over-lock", help="take over the stale lock a killed run left in the run folder"
)
ResumeChangedOpt = typer.Option(
    False, "--resume-changed", help="resume although the recipe changed the data order, batch sizes, dataset or model"
)
AllowMissingInitOpt = typer.Option(
    False, "--allow-missing-init",
    help="train backbone tensors missing from the --from/init source from random values (default: refuse the source)")


def literal(value: object, style: str | None = None) -> Text:
    """``value`` as rich text shown exactly as written: no markup (``[red]``) and no emoji codes (``:train:``).

    Use it for every user-supplied string a command prints (split names, paths, answers from data).
    """
    return Text(str(value), style=style or "")


def run_stage(recipe: str, section: str, overrides: list[str] | None, resume: str, init: str | None,
              run_name: str | None, overwrite: bool, extra: list[str] | None = None, *,
              take_over_lock: bool = False, resume_changed: bool = False, allow_missing_init: bool = False):
    """Load ``recipe`` with overrides, resolve ``section`` and train it; prints where everything went."""
    from ..config.recipe import load_recipe
    from ..train.loop import train

    overrides = list(overrides or []) + list(extra or [])
    if run_name:
        overrides.append(f"{section}.run_name={run_name}")
    loaded = load_recipe(recipe, overrides)
    stage = loaded.resolve(section)
    import torch
    from accelerate import PartialState

    # print once, also under torchrun / accelerate launch; the state must be made as train() makes it (cpu without
    # CUDA), else the processes would not form one group
    main = PartialState(cpu=not torch.cuda.is_available()).is_main_process
    if main:
        for replacement in loaded.replaced_in(section):
            console.print(f"{escape(loaded.source)}: {escape(str(replacement))}", highlight=False, soft_wrap=True)
    result = train(stage, init=init, resume=resume, overwrite=overwrite, console=console, take_over_lock=take_over_lock,
                   resume_changed=resume_changed, allow_missing_init=allow_missing_init)
    if main:
        console.print(f"[green]done[/]: {result.state.step} steps; model directory {result.checkpoint}")
    return result
