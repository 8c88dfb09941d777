"""Moved to :mod:`vlmo_cli.config.toml` (now ``tomli_w`` plus the ``None`` → ``"none"`` mapping); kept until the
redesign lands."""

from .config.toml import dump_toml, toml_scalar  # noqa: F401
from .config.toml import toml_scalar as _toml_scalar  # noqa: F401
