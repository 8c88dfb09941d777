"""Moved to :mod:`vlmo_cli.cli.quickstart` (it drives the command line, so it lives there); kept until the redesign
lands. This shim is the one library module that imports ``cli/``; it goes with the other shims."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console


def run_quickstart(out: str | Path = "vlmo-quickstart", recipe: str | None = None, console: Console | None = None,
                   overrides: list[str] | None = None):
    """:func:`vlmo_cli.cli.quickstart.run_quickstart` on the ``vlmo`` app."""
    from .cli.app import app
    from .cli.quickstart import run_quickstart as run

    return run(app, out, recipe, console, overrides)
