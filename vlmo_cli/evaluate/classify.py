"""The runner behind ``vlmo eval classify``: accuracy, per-class precision / recall and the confusion matrix of a
``finetune classify`` model on a labelled ``pairs`` split (:mod:`.classify_metrics`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, DataError
from ..factory import InferenceModel
from .report import check_report_outputs, write_report
from .target import EvalTarget, check_split, default_report_path, load_for, pair_task_logits, report_header


def predict_classify(model: InferenceModel, target: EvalTarget) -> tuple[list[int], list[int]]:
    """Arg-max class per labelled (image, caption) of the split, and the true classes, in split order."""
    predictions: list[int] = []
    labels: list[int] = []
    for batch, logits in pair_task_logits(model, target, "classify", "labels"):
        predictions += logits.argmax(1).tolist()
        labels += batch["labels"].tolist()
    return predictions, labels


def run_classify(
    model: InferenceModel | str | Path,
    target: EvalTarget,
    *,
    out: str | Path | None = None,
    device: str | None = None,
    tokenizer=None,
    overwrite: bool = False,
) -> tuple[dict[str, Any], Path]:
    """Accuracy, per-class precision/recall and the confusion matrix of a ``finetune classify`` model on a labelled
    ``pairs`` split (one example per image-caption pair, classes named by the prepared dataset)."""
    from ..data.store import open_prepared
    from .classify_metrics import classification_metrics

    prepared = open_prepared(target.dataset, "pairs")
    check_split(prepared, target.split)
    class_names = prepared.label_names
    if not class_names:
        raise DataError(f"{target.dataset}: no class labels (prepare the pairs with --label-col)")
    loaded = load_for(model, target, device, tokenizer)
    loaded.require_head("classify", "fine-tune it with `vlmo finetune classify`")
    if loaded.model.config.num_classes != len(class_names):
        raise CheckpointError(f"{loaded.path}: the classify head has {loaded.model.config.num_classes} classes but "
                              f"{target.dataset} has {len(class_names)} ({', '.join(class_names)}); evaluate on data "
                              "with the classes the model was fine-tuned with")
    report_path = Path(out) if out else default_report_path(loaded.path, "classify")
    check_report_outputs(report_path, overwrite=overwrite, inputs=[target.dataset, loaded.path])
    t0 = time.perf_counter()
    predictions, labels = predict_classify(loaded, target)
    seconds = time.perf_counter() - t0
    report = report_header("classify", loaded, target)
    report.update(metrics=classification_metrics(predictions, labels, class_names),
                  predictor="arg-max of the classify head on the fused (image, caption) pair",
                  timings_s={"predict": seconds})
    write_report(report, report_path)
    return report, report_path
