"""Model-free evaluation metrics: retrieval recall, official VQA accuracy, NLVR2, classification, reports and
example grids.

Everything here works on embeddings, predictions and official-format files; encoding with a model and the
``vlmo eval`` commands live elsewhere and call these functions.
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
