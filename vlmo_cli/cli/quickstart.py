"""``vlmo quickstart [--out DIR]``: the whole lifecycle on the embedded demo data, in minutes on a CPU."""

from __future__ import annotations

import typer


def quickstart(
    out: str = typer.Option("vlmo-quickstart", "--out", help="work folder (demo data, runs, reports, exports)"),
    recipe: str = typer.Option("", "--recipe", help="recipe to use instead of the shipped recipes/tiny.toml"),
    overrides: list[str] = typer.Argument(None, help="recipe overrides for every step, e.g. train.seed=2"),
) -> None:
    """Prepare demo data, run the three pre-training stages, fine-tune (VQA, retrieval, NLVR2), evaluate, export."""
    from ..quickstart import run_quickstart

    run_quickstart(out, recipe or None, overrides=overrides or [])


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart)
