"""Moved to :mod:`vlmo_cli.train.report`; kept until the redesign lands."""

from .train.report import *  # noqa: F401,F403
from .train.report import (RUN_REPORT, group_metrics, metric_series, read_metric_rows,  # noqa: F401
                           render_run_report, write_run_report)
