"""``vlmo pretrain-vision | pretrain-text | pretrain-vl RECIPE [overrides]``: the three pre-training stages."""

from __future__ import annotations

import typer

from .common import (AllowMissingInitOpt, InitOpt, OverridesArg, OverwriteOpt, RecipeArg, ResumeChangedOpt,
                     ResumeOpt, RunNameOpt, TakeOverLockOpt, run_stage)

_STAGES = {
    "pretrain-vision": ("pretrain.vision", "Stage 1: masked-image modelling on images (attention, patch embedding, "
                        "vision experts); or start from BEiT weights with --from beit:PATH."),
    "pretrain-text": ("pretrain.text", "Stage 2: text-only MLM; only text embeddings, language experts, MLM head, "
                      "position table and final norm train."),
    "pretrain-vl": ("pretrain.vl", "Stage 3: ITC (+VL branch) + ITM with global hard negatives + 0.25·MLM on "
                    "image-text pairs."),
}


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
    for name, (section, help_text) in _STAGES.items():
        app.command(name, help=help_text)(_command(section))
