"""Classification metrics of ``vlmo eval classify``: accuracy, per-class precision and recall, confusion matrix.

Model-free: it takes predicted and true class indices and the class names of the prepared dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlmo_cli.errors import DataError


def confusion_matrix(predictions: Sequence[int], labels: Sequence[int], num_classes: int) -> list[list[int]]:
    """``matrix[true][predicted]``: how many examples of class ``true`` were predicted as ``predicted``."""
    if len(predictions) != len(labels):
        raise DataError(f"{len(predictions)} predictions for {len(labels)} labels")
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for predicted, true in zip(predictions, labels):
        for name, index in (("prediction", predicted), ("label", true)):
            if not 0 <= int(index) < num_classes:
                raise DataError(f"{name} {index} is not a class index in [0, {num_classes})")
        matrix[int(true)][int(predicted)] += 1
    return matrix


def _percent(part: int, whole: int) -> float | None:
    """``100 * part / whole``; ``None`` when ``whole`` is 0 (undefined, e.g. precision of a class never predicted)."""
    return 100.0 * part / whole if whole else None


def classification_metrics(
    predictions: Sequence[int], labels: Sequence[int], class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision / recall / support and the confusion matrix, in percent.

    Args:
        predictions: predicted class index per example.
        labels: true class index per example.
        class_names: name of each class index.

    Returns:
        ``accuracy``, ``num_examples``, ``num_correct``, ``per_class`` (``{name: {precision, recall, support}}``;
        precision is ``None`` for a class never predicted), ``macro_precision`` / ``macro_recall`` (means over the
        classes where defined), ``class_names`` and ``confusion_matrix`` (rows: true class, columns: predicted).
    """
    if not labels:
        raise DataError("no labelled examples to score")
    matrix = confusion_matrix(predictions, labels, len(class_names))
    correct = sum(matrix[i][i] for i in range(len(class_names)))
    per_class: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(class_names):
        predicted_as = sum(row[index] for row in matrix)
        support = sum(matrix[index])
        per_class[name] = {"precision": _percent(matrix[index][index], predicted_as),
                           "recall": _percent(matrix[index][index], support), "support": support}

    def macro(key: str) -> float | None:
        values = [scores[key] for scores in per_class.values() if scores[key] is not None]
        return sum(values) / len(values) if values else None

    return {
        "accuracy": 100.0 * correct / len(labels),
        "num_examples": len(labels),
        "num_correct": correct,
        "per_class": per_class,
        "macro_precision": macro("precision"),
        "macro_recall": macro("recall"),
        "class_names": list(class_names),
        "confusion_matrix": matrix,
    }
