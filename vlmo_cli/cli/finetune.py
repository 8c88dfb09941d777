"""``vlmo finetune TASK [RECIPE] [--from MODEL] [overrides]``; the tasks are the ``finetune`` stages of
:data:`vlmo_cli.config.schema.STAGES`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from ..config.schema import finetune_commands
from .common import (AllowMissingInitOpt, InitOpt, OverridesArg, OverwriteOpt, ResumeChangedOpt, ResumeOpt,
                     RunNameOpt, TakeOverLockOpt, run_stage)

#: ``vlmo finetune TASK`` → its recipe sections (the first one is the default of a task with presets)
TASKS = finetune_commands()
Task = Enum("Task", {name: name for name in TASKS}, type=str)
_TASK_NAMES = ", ".join(TASKS)
_PRESETS = {name: {s.preset: s.name for s in specs if s.preset} for name, specs in TASKS.items()}
_PRESET_HELP = "; ".join(f"{name} only: {', '.join(presets)}" for name, presets in _PRESETS.items() if presets)


def finetune(
    task: Task = typer.Argument(..., help=_TASK_NAMES),
    recipe: str = typer.Argument("base", help="a recipe file or a shipped name (default: base)"),
    overrides: list[str] = OverridesArg,
    dataset: str = typer.Option(
        "", "--dataset", help=f"{_PRESET_HELP} (the recipe's presets; default: the first) or a prepared DIR",
        show_default=False,
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
    presets = _PRESETS[task.value]
    section = TASKS[task.value][0].name
    if dataset in presets:
        section = presets[dataset]
    elif dataset and presets:
        extra.append(f"{section}.dataset={Path(dataset)}")
    run_stage(recipe, section, overrides, resume, init, run_name, overwrite, extra, take_over_lock=take_over_lock,
              resume_changed=resume_changed, allow_missing_init=allow_missing_init)


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)
