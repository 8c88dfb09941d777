"""Moved to :mod:`vlmo_cli.bench.retrieval`; kept until the redesign lands."""

from .bench.retrieval import bench_eval_retrieval  # noqa: F401
