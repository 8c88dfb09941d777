"""Evaluation: model-free metrics and, one module per task, the runners behind ``vlmo eval``.

The metric modules (``retrieval_metrics``, ``vqa_metrics``, ``nlvr2_metrics``, ``classify_metrics``) and ``report`` /
``examples_grid`` work on embeddings, predictions and official-format files and never load a model; their public
functions are re-exported here. The runners load a model through :mod:`vlmo_cli.factory` and call them:
:mod:`.target` (what to evaluate on: the recipe's ``[eval.TASK]`` section and ``--split``), :mod:`.retrieval`,
:mod:`.vqa`, :mod:`.nlvr2` and :mod:`.classify`; they are imported by module, not from here.
"""

from vlmo_cli.evaluate.classify_metrics import classification_metrics, confusion_matrix
from vlmo_cli.evaluate.examples_grid import grid_size, save_retrieval_grid
from vlmo_cli.evaluate.nlvr2_metrics import (
    load_nlvr2_labels,
    load_nlvr2_predictions,
    nlvr2_metrics,
    write_nlvr2_predictions,
)
from vlmo_cli.evaluate.report import metrics_table, print_metrics, write_json, write_report
from vlmo_cli.evaluate.retrieval_metrics import (
    RetrievalResult,
    TopK,
    build_text_to_image,
    evaluate_retrieval,
    pool_warnings,
    recall_at_k,
    rerank_retrieval,
    rerank_topk,
    retrieval_topk,
    topk_similarity,
)
from vlmo_cli.evaluate.vqa_metrics import (
    EVALUATORS,
    SoftVQAScore,
    load_vqa_annotations,
    load_vqa_questions,
    load_vqa_results,
    normalize_answer,
    score_results,
    soft_vqa_scores,
    vqa_accuracy,
    write_submission,
)

__all__ = [
    "EVALUATORS",
    "RetrievalResult",
    "SoftVQAScore",
    "TopK",
    "build_text_to_image",
    "classification_metrics",
    "confusion_matrix",
    "evaluate_retrieval",
    "grid_size",
    "load_nlvr2_labels",
    "load_nlvr2_predictions",
    "load_vqa_annotations",
    "load_vqa_questions",
    "load_vqa_results",
    "metrics_table",
    "nlvr2_metrics",
    "normalize_answer",
    "pool_warnings",
    "print_metrics",
    "recall_at_k",
    "rerank_retrieval",
    "rerank_topk",
    "retrieval_topk",
    "save_retrieval_grid",
    "score_results",
    "soft_vqa_scores",
    "topk_similarity",
    "vqa_accuracy",
    "write_json",
    "write_nlvr2_predictions",
    "write_report",
    "write_submission",
]
