"""``vlmo report RUN_FOLDER``: one self-contained HTML page of a run (curves, recipe, environment, evaluations)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

console = Console()


def report(
    run: Path = typer.Argument(..., help="a run folder (runs/NAME) written by a training command"),
    out: Path = typer.Option(None, "--out", help="where to write the page (default RUN/report.html, always updated)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a previous report at --out (never another file)"),
) -> None:
    """Write an HTML report of a run: loss, accuracy, lr, samples/s and validation curves, the resolved recipe, the
    environment, checkpoints and the run's evaluation reports with their example pictures.
    """
    from ..train.report import write_run_report

    path = write_run_report(run, out, overwrite=overwrite)
    console.print(f"report: {escape(str(path))}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
