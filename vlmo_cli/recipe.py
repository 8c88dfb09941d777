"""Moved to :mod:`vlmo_cli.config.recipe`; kept until the redesign lands."""

from .config.recipe import *  # noqa: F401,F403
from .config.recipe import Recipe, ResolvedStage, dump_toml, load_recipe, parse_recipe  # noqa: F401
