"""Moved to :mod:`vlmo_cli.evaluate.target` and the task runners :mod:`~vlmo_cli.evaluate.retrieval`,
:mod:`~vlmo_cli.evaluate.vqa`, :mod:`~vlmo_cli.evaluate.nlvr2`, :mod:`~vlmo_cli.evaluate.classify`
(``render_report`` moved to :mod:`vlmo_cli.cli.evaluate`); kept until the redesign lands."""

from .classify import predict_classify, run_classify  # noqa: F401
from .nlvr2 import predict_nlvr2, run_nlvr2  # noqa: F401
from .retrieval import run_retrieval, save_examples  # noqa: F401
from .target import (EVAL_OF_STAGE, FALLBACK_RECIPE, RETRIEVAL_PRESETS, EvalTarget, check_split,  # noqa: F401
                     default_report_path, eval_target, run_recipe_of)
from .vqa import predict_vqa, run_vqa, score_vqa_predictions, vqa_files_report  # noqa: F401

