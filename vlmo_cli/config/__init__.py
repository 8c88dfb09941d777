"""Recipes, the code: the schema of every section and stage (:mod:`.schema`, which holds THE list of stages), value
typing (:mod:`.values`), loading, overrides and resolution (:mod:`.recipe`) and the TOML writer (:mod:`.toml`).
The recipe files themselves are data in ``vlmo_cli/recipes/``."""

from __future__ import annotations

from .recipe import Recipe, ResolvedStage, load_recipe, parse_recipe
from .schema import STAGES, StageSpec

__all__ = ["STAGES", "Recipe", "ResolvedStage", "StageSpec", "load_recipe", "parse_recipe"]
