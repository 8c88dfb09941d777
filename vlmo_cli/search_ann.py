"""Moved to :mod:`vlmo_cli.inference.ann`; kept until the redesign lands."""

from .inference.ann import *  # noqa: F401,F403
