"""``vlmo recipes list|show|validate``: browse the shipped recipes and check recipe files before a long run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import RecipeError
from ..config.recipe import load_recipe, read_recipe_text, recipe_path, shipped_recipes, stage_names

recipes_app = typer.Typer(
    help="List, show and validate recipes (TOML files with the settings of every stage).",
    no_args_is_help=True,
)


@recipes_app.command("list")
def list_recipes() -> None:
    """The recipes shipped with vlmo_cli (usable by name anywhere, e.g. `vlmo pretrain-vl base`)."""
    table = Table(title="shipped recipes", show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("model size")
    table.add_column("path", overflow="fold")
    table.add_column("description", overflow="fold")
    for info in shipped_recipes():
        table.add_row(info.name, info.model_size, _short(info.path), info.description)
    Console().print(table)


@recipes_app.command("show")
def show_recipe(
    name: Annotated[str, typer.Argument(help="a shipped recipe name or a recipe file")],
    overrides: Annotated[
        Optional[list[str]], typer.Argument(help="key.path=value overrides, e.g. train.lr=1e-4", show_default=False)
    ] = None,
    resolved: Annotated[
        Optional[str],
        typer.Option("--resolved", help=f"print the complete settings of one stage ({', '.join(stage_names())})"),
    ] = None,
) -> None:
    """Print a recipe's TOML, or with --resolved STAGE the complete settings that stage will run with."""
    if resolved is None and not overrides:
        typer.echo(read_recipe_text(recipe_path(name)), nl=False)
        return
    recipe = load_recipe(name, overrides or [])
    typer.echo(recipe.resolve(resolved).to_toml() if resolved else recipe.to_toml(), nl=False)


@recipes_app.command("validate")
def validate_recipes(
    paths: Annotated[list[str], typer.Argument(help="recipe files or shipped names")],
) -> None:
    """Check recipe files: every key, type, range and stage; prints OK or every problem (exit code 2 on any)."""
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    failed = 0
    for path in paths:
        try:
            recipe = load_recipe(path)
        except RecipeError as exc:
            failed += 1
            err.print(f"[bold red]FAIL[/] {escape(str(exc))}")
            continue
        stages = ", ".join(recipe.stage_names()) or "no stages"
        out.print(f"[bold green]OK[/]   {escape(path)} ({recipe.model_size}; {stages})")
    if failed:
        # SystemExit rather than typer.Exit: with standalone_mode=False click returns typer.Exit's code instead of
        # raising it, and the exit status is the whole point of `validate` in scripts and CI.
        sys.exit(2)


def _short(path: Path) -> str:
    """The path relative to the working directory when it lies below it (``recipes/base.toml`` in a clone)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def register(app: typer.Typer) -> None:
    app.add_typer(recipes_app, name="recipes")
