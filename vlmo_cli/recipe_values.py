"""Moved to :mod:`vlmo_cli.config.values` (its names are public there); kept until the redesign lands."""

from .config.values import *  # noqa: F401,F403
from .config.values import INVALID as _INVALID  # noqa: F401
from .config.values import check_value as _check_value  # noqa: F401
from .config.values import format_value as _fmt  # noqa: F401
from .config.values import parse_text as _parse_text  # noqa: F401
from .config.values import suggest as _suggest  # noqa: F401
