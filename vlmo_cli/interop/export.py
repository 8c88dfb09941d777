"""Moved to :mod:`vlmo_cli.inference.export`; kept until the redesign lands."""

from ..inference.export import *  # noqa: F401,F403
from ..inference.export import checkpoint_dir as _checkpoint_dir  # noqa: F401
from ..layout import find_up as _find_up  # noqa: F401
from ..model.flops import parameter_counts  # noqa: F401
