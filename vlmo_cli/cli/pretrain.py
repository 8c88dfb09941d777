"""``vlmo pretrain-vision | pretrain-text | pretrain-vl | pretrain-mdm RECIPE [overrides]``: the pre-training stages
(one command per ``pretrain`` section of :data:`~vlmo_cli.config.schema.STAGES`)."""

from __future__ import annotations

import typer

from ..config.schema import stages_of
from .common import (AllowMissingInitOpt, InitOpt, OverridesArg, OverwriteOpt, RecipeArg, ResumeChangedOpt,
                     ResumeOpt, RunNameOpt, TakeOverLockOpt, run_stage)

def _command(section: str):
    def command(
        recipe: str = RecipeArg,
        overrides: list[str] = OverridesArg,
        resume: str = ResumeOpt,
        init: str = InitOpt,
        run_name: str = RunNameOpt,
        overwrite: bool = OverwriteOpt,
        take_over_lock: bool = TakeOverLockOpt,
        resume_changed: bool = ResumeChangedOpt,
        allow_missing_init: bool = AllowMissingInitOpt,
    ) -> None:
        run_stage(recipe, section, overrides, resume, init, run_name, overwrite, take_over_lock=take_over_lock,
                  resume_changed=resume_changed, allow_missing_init=allow_missing_init)

    return command


def register(app: typer.Typer) -> None:
    for spec in stages_of("pretrain"):
        app.command(spec.command, help=spec.details or spec.help)(_command(spec.name))
