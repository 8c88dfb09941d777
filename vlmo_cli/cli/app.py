"""The ``vlmo`` command: a Typer app assembled from the command modules of this package.

Each module listed in :data:`COMMAND_MODULES` defines ``register(app: typer.Typer) -> None``. Command modules import
heavy libraries (torch, datasets) inside their command functions so that ``vlmo --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import VlmoError
from ..train.signals import TrainingInterrupted

COMMAND_MODULES = (
    "recipes",
    "model",
    "prepare",
    "convert",
    "pretrain",
    "finetune",
    "evaluate",
    "embed",
    "serve",
    "export",
    "bench",
    "report",
    "quickstart",
)

app = typer.Typer(
    name="vlmo",
    help="VLMo: pre-train, fine-tune, evaluate and export Mixture-of-Modality-Experts vision-language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"{__package__}.{_name}")
    except ModuleNotFoundError as exc:  # a command group not built yet
        if exc.name != f"{__package__}.{_name}":
            raise
        continue
    _module.register(app)

err_console = Console(stderr=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one readable line and exit code 2."""
    try:
        rc = app(args=argv, standalone_mode=False)
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
    except Exception as exc:  # click usage errors in standalone_mode=False
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(2)
        raise
    if isinstance(rc, int) and rc:
        if rc == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into a silent exit code 130
            err_console.print("interrupted")
        sys.exit(rc)
