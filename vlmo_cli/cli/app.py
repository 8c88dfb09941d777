"""The ``vlmo`` command: a Typer app assembled from the command modules of this package.

Each module listed in :data:`COMMAND_MODULES` defines ``register(app: typer.Typer) -> None``. Command modules import
heavy libraries (torch, datasets) inside their command functions so that ``vlmo --help`` stays fast.
"""

from __future__ import annotations

import typer

from . import (bench, convert, embed, evaluate, export, finetune, model, prepare, pretrain, quickstart, recipes,
               report, serve)
from .common import invoke
from .examples import add_examples

#: the command modules, in the order ``vlmo --help`` lists their commands
COMMAND_MODULES = (recipes, model, prepare, convert, pretrain, finetune, evaluate, embed, serve, export, bench, report,
                   quickstart)

app = typer.Typer(
    name="vlmo",
    help="VLMo: pre-train, fine-tune, evaluate and export Mixture-of-Modality-Experts vision-language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def version_text() -> str:
    """``vlmo --version``: the package, Python and torch versions and the accelerator torch sees."""
    import platform

    import torch

    from .. import __version__

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        device = f"CUDA {torch.version.cuda} available: {torch.cuda.device_count()} GPU(s) ({names})"
    elif torch.version.cuda:
        device = f"CUDA {torch.version.cuda} build, no GPU visible: CPU only"
    else:
        device = "no CUDA build: CPU only"
    return f"vlmo-cli {__version__}\nPython {platform.python_version()}, torch {torch.__version__}\n{device}"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_show_version,
        help="Print the vlmo-cli, Python and torch versions and whether CUDA is available, then exit.",
    ),
) -> None:
    """VLMo: pre-train, fine-tune, evaluate and export Mixture-of-Modality-Experts vision-language models."""


for _module in COMMAND_MODULES:
    _module.register(app)


def _plain_help(typer_app: typer.Typer) -> None:
    """Help pages as click writes them: text shown as written (``[eval.vqa]`` is not taken for markup) and flags
    without a value type (``--overwrite``, not ``--overwrite <bool>``), for this app and every command group in it."""
    typer_app.rich_markup_mode = None
    for group in typer_app.registered_groups:
        _plain_help(group.typer_instance)


_plain_help(app)
add_examples(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one readable line and exit code 2."""
    invoke(app, argv)
