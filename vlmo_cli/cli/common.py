"""Shared pieces of the training commands: recipe loading and the run options every stage takes."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

console = Console()

RecipeArg = typer.Argument(..., help="a recipe file or a shipped name (tiny, base, base_plus, large)")
OverridesArg = typer.Argument(None, help="recipe overrides key.path=value, e.g. train.lr=1e-4 data.batch_size=64")
ResumeOpt = typer.Option("", "--resume", help='"auto" (newest complete checkpoint of the run folder) or a checkpoint path')
InitOpt = typer.Option(None, "--from", "--init", help="start from a model dir / run folder / official .pt / beit:PATH")
RunNameOpt = typer.Option(None, "--run-name", help="run folder name under train.output_dir")
OverwriteOpt = typer.Option(False, "--overwrite", help="delete an existing run folder of the same name first")


def run_stage(recipe: str, section: str, overrides: list[str] | None, resume: str, init: str | None,
              run_name: str | None, overwrite: bool, extra: list[str] | None = None):
    """Load ``recipe`` with overrides, resolve ``section`` and train it; prints where everything went."""
    from ..recipe import load_recipe
    from ..train.loop import train

    overrides = list(overrides or []) + list(extra or [])
    if run_name:
        overrides.append(f"{section}.run_name={run_name}")
    loaded = load_recipe(recipe, overrides)
    stage = loaded.resolve(section)
    from accelerate import PartialState

    main = PartialState().is_main_process  # print once, also under torchrun / accelerate launch
    if main:
        for replacement in loaded.replaced_in(section):
            console.print(f"{escape(loaded.source)}: {escape(str(replacement))}", highlight=False, soft_wrap=True)
    result = train(stage, init=init, resume=resume, overwrite=overwrite, console=console)
    if main:
        console.print(f"[green]done[/]: {result.state.step} steps; model directory {result.checkpoint}")
    return result
