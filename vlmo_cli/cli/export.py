"""``vlmo export MODEL_DIR OUT --format safetensors|onnx``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

console = Console()


class ExportFormat(str, Enum):
    safetensors = "safetensors"
    onnx = "onnx"


def export(
    model_dir: Path = typer.Argument(..., help="model directory, run folder (its newest checkpoint), "
                                     "checkpoints/step_N or official .pt checkpoint"),
    out: Path = typer.Argument(..., help="output directory"),
    format: ExportFormat = typer.Option(ExportFormat.safetensors, "--format", "-f", help="safetensors | onnx"),
    title: str = typer.Option(None, "--title", help="title of the README card (safetensors)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a previous export of the same format at OUT "
                                                              "(a folder holding anything else is never replaced)"),
) -> None:
    """Export a model: a clean model directory with a README card, or ONNX image and text towers; both carry the
    model's tokenizer and preprocessing.json (image size, resize rule, mean/std, text length)."""
    from ..inference.export import ONNX_TOLERANCE, export_onnx, export_safetensors

    if format is ExportFormat.safetensors:
        path = export_safetensors(model_dir, out, title=title, overwrite=overwrite)
    else:
        diffs = export_onnx(model_dir, out, overwrite=overwrite)
        for name, diff in diffs.items():
            console.print(f"{out / name}: max |onnxruntime - PyTorch| = {diff:.2e} (tolerance {ONNX_TOLERANCE:g})",
                          highlight=False, soft_wrap=True)
        path = out
    _report_files(path)


def _report_files(path: Path) -> None:
    """Which files the export wrote, and a warning when it carries no tokenizer (texts cannot be encoded)."""
    names = sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    console.print(f"wrote {path} ({', '.join(names)})", highlight=False, soft_wrap=True)
    from ..layout import TOKENIZER_FILES

    if not set(TOKENIZER_FILES) & set(names):
        console.print("[yellow]note:[/] the model had no tokenizer saved with it, so none was exported; copy "
                      "tokenizer.json or vocab.txt into the folder to encode text", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
