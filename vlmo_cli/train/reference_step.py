"""Moved to :mod:`vlmo_cli.bench.reference_step` (the benchmark's and the tests' oracle, not training code); kept
until the redesign lands."""

from ..bench.reference_step import *  # noqa: F401,F403
from ..bench.reference_step import ReferenceStageModule, reference_vl_step  # noqa: F401
