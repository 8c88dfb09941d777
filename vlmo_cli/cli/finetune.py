"""``vlmo finetune vqa|nlvr2|retrieval|classify [RECIPE] [--from MODEL] [overrides]``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from .common import (AllowMissingInitOpt, InitOpt, OverridesArg, OverwriteOpt, ResumeChangedOpt, ResumeOpt,
                     RunNameOpt, TakeOverLockOpt, run_stage)


class Task(str, Enum):
    vqa = "vqa"
    nlvr2 = "nlvr2"
    retrieval = "retrieval"
    classify = "classify"


def finetune(
    task: Task = typer.Argument(..., help="vqa, nlvr2, retrieval or classify"),
    recipe: str = typer.Argument("base", help="a recipe file or a shipped name (default: base)"),
    overrides: list[str] = OverridesArg,
    dataset: str = typer.Option(
        "coco", "--dataset", help="retrieval only: coco, flickr (the recipe's presets) or a prepared DIR"
    ),
    init: str = InitOpt,
    resume: str = ResumeOpt,
    run_name: str = RunNameOpt,
    overwrite: bool = OverwriteOpt,
    take_over_lock: bool = TakeOverLockOpt,
    resume_changed: bool = ResumeChangedOpt,
    allow_missing_init: bool = AllowMissingInitOpt,
) -> None:
    """Fine-tune a pre-trained model on a task with the recipe's preset (the paper's fine-tuning hyper-parameters)."""
    extra: list[str] = []
    if task is Task.retrieval:
        if dataset in ("coco", "flickr"):
            section = f"finetune.retrieval_{dataset}"
        else:
            section = "finetune.retrieval_coco"
            extra.append(f"{section}.dataset={Path(dataset)}")
    else:
        section = f"finetune.{task.value}"
    run_stage(recipe, section, overrides, resume, init, run_name, overwrite, extra, take_over_lock=take_over_lock,
              resume_changed=resume_changed, allow_missing_init=allow_missing_init)


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)
