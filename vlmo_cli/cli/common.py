"""Shared pieces of the training commands: recipe loading and the run options every stage takes."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

console = Console()

RecipeArg = typer.Argument(..., help="a recipe file or a shipped name (tiny, base, base_plus, large)")
OverridesArg = typer.Argument(None, help="recipe overrides key.path=value, e.g. train.lr=1e-4 data.batch_size=64")
ResumeOpt = typer.Option("", "--resume", help='"auto" (newest complete checkpoint of the run folder) or a checkpoint path')
InitOpt = typer.Option(None, "--from", "--init", help="start from a model dir / run folder / official .pt / beit:PATH")
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
