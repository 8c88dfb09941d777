"""Moved to :mod:`vlmo_cli.config.schema`; kept until the redesign lands."""

from .config.schema import *  # noqa: F401,F403
from .config.schema import (  # noqa: F401
    STAGES,
    TRACKER_PACKAGES,
    FieldSpec,
    PretrainVLTask,
    RecipeTrain,
    ResolvedStage,
    StageSpec,
    shared_specs,
    specs_of,
)
