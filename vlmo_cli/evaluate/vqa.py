"""The runner behind ``vlmo eval vqa``: predict answers on a prepared split and score them with the official
evaluator (:mod:`.vqa_metrics`), or write the submission file of an unlabelled split; and scoring a results file
without a model."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..factory import InferenceModel
from .report import check_report_outputs, sibling_path, write_report
from .target import (EvalTarget, check_examples, check_split, default_report_path, examples_suffix, load_for,
                     pair_task_logits, report_header)


def vqa_files_report(results, questions, annotations, *, evaluator: str | None = None,
                     dedupe: str | None = None) -> dict[str, Any]:
    """Official VQA accuracy of a results list/file against official-format questions and annotations.

    ``evaluator``: ``official`` (default) or ``legacy``; ``dedupe``: ``None`` refuses conflicting duplicate ids,
    ``first`` / ``last`` keeps that answer.
    """
    from .vqa_metrics import DEFAULT_EVALUATOR, score_results

    return score_results(results, questions, annotations, evaluator=evaluator or DEFAULT_EVALUATOR, dedupe=dedupe)


def score_vqa_predictions(predictions: str | Path, questions: str | Path | None, annotations: str | Path,
                          *, out: str | Path | None = None, evaluator: str | None = None,
                          dedupe: str | None = None, overwrite: bool = False) -> tuple[dict[str, Any], Path]:
    """``vlmo eval vqa --predictions R --questions Q --annotations A``: score a results file without a model."""
    path = Path(out) if out else default_report_path(None, "vqa")
    check_report_outputs(path, overwrite=overwrite, inputs=[predictions, questions, annotations])
    report = report_header("vqa", None, None)
    report.update(predictions=str(predictions), questions=str(questions) if questions else None,
                  annotations=str(annotations))
    report["metrics"] = vqa_files_report(predictions, questions, annotations, evaluator=evaluator, dedupe=dedupe)
    write_report(report, path)
    return report, path


def _vqa_official(rows: Mapping[str, list]) -> tuple[list[dict], list[dict]]:
    """Official-format questions and annotations of the labelled rows of a prepared split."""
    questions, annotations = [], []
    for qid, image_id, question, answers, a_type, q_type in zip(
        rows["question_id"], rows["image_id"], rows["question"], rows["answers"], rows["answer_type"],
        rows["question_type"],
    ):
        if not answers:
            continue
        questions.append({"question_id": int(qid), "image_id": image_id, "question": question})
        annotations.append({"question_id": int(qid), "answer_type": a_type, "question_type": q_type,
                            "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]})
    return questions, annotations


def predict_vqa(model: InferenceModel, target: EvalTarget, answers: Sequence[str]) -> tuple[list[tuple[int, str]], float]:
    """Arg-max answers ``[(question_id, answer)]`` in split order, and VLMo's soft VQA score (0..1)."""
    from .vqa_metrics import SoftVQAScore

    pairs: list[tuple[int, str]] = []
    soft = SoftVQAScore()
    for batch, logits in pair_task_logits(model, target, "vqa", "question_ids"):
        logits = logits.float().cpu()
        soft.update(logits, batch["vqa_targets"])
        pairs += [(int(q), answers[int(i)]) for q, i in zip(batch["question_ids"], logits.argmax(1))]
    return pairs, soft.compute()


def run_vqa(
    model: InferenceModel | str | Path,
    target: EvalTarget,
    *,
    out: str | Path | None = None,
    submission: bool | None = None,
    evaluator: str | None = None,
    examples: int = 0,
    device: str | None = None,
    tokenizer=None,
    overwrite: bool = False,
) -> tuple[dict[str, Any], Path]:
    """VQA on a prepared split: official accuracy when it has answers, else the submission file.

    Predictions are the arg-max over the dataset's answer vocabulary (``answers.json``). With answers, the report has
    overall / per answer type / per question type accuracy (the official evaluator), VLMo's soft score and the
    majority-answer baseline on the same questions; the results file is written too when ``submission`` (default:
    the recipe's ``submission``). Without answers, ``<report>-submission.json`` is written (one entry per question
    id, de-duplicated, coverage of the split checked). ``evaluator``: ``official`` / ``legacy`` (default: the
    recipe's ``evaluator``). ``examples``: draw this many questions into ``<report>-examples.png``.
    """
    from ..data.store import open_prepared
    from .vqa_metrics import check_evaluator, write_submission

    if evaluator is not None:
        check_evaluator(evaluator)
    check_examples(examples)
    prepared = open_prepared(target.dataset, "vqa")
    check_split(prepared, target.split)
    answers = prepared.answers
    loaded = load_for(model, target, device, tokenizer)
    loaded.require_head("vqa", "fine-tune it with `vlmo finetune vqa`")
    if loaded.model.config.vqa_num_answers != len(answers):
        raise CheckpointError(f"{loaded.path}: the VQA head has {loaded.model.config.vqa_num_answers} answers but "
                              f"{target.dataset}/answers.json has {len(answers)}; evaluate on the answer vocabulary "
                              "the model was fine-tuned with")
    report_path = Path(out) if out else default_report_path(loaded.path, "vqa")
    check_report_outputs(report_path, ["-submission.json", "-results.json"] + examples_suffix(examples),
                         overwrite=overwrite, inputs=[target.dataset, loaded.path])
    t0 = time.perf_counter()
    pairs, soft_score = predict_vqa(loaded, target, answers)
    seconds = time.perf_counter() - t0
    rows = prepared.split(target.split).select_columns(
        ["question_id", "image_id", "question", "answers", "answer_type", "question_type"]).to_dict()
    split_ids = [int(q) for q in rows["question_id"]]
    questions, annotations = _vqa_official(rows)
    report = report_header("vqa", loaded, target)
    report.update(num_questions=len(split_ids), num_answers_vocab=len(answers), predictor="arg-max over answers.json",
                  timings_s={"predict": seconds})
    want_file = bool(getattr(target.task, "submission", True) if submission is None else submission)
    evaluator = evaluator or getattr(target.task, "evaluator", None)
    if not annotations:
        summary = write_submission(pairs, sibling_path(report_path, "-submission.json"), split_ids)
        report.update(labelled=False, submission=str(summary.path), submission_entries=summary.num_written,
                      duplicates_dropped=summary.num_duplicates)
    else:
        labelled = {q["question_id"] for q in questions}
        results = [{"question_id": q, "answer": a} for q, a in pairs if q in labelled]
        if want_file:
            summary = write_submission(pairs, sibling_path(report_path, "-results.json"), split_ids)
            report["results_file"] = str(summary.path)
        # dedupe "first", as the results file written above
        metrics = vqa_files_report(results, questions, annotations, evaluator=evaluator, dedupe="first")
        majority = Counter(Counter(a["answer"] for a in ann["answers"]).most_common(1)[0][0]
                           for ann in annotations).most_common(1)[0][0]
        baseline = vqa_files_report([{"question_id": q["question_id"], "answer": majority} for q in questions],
                                    questions, annotations, evaluator=evaluator)
        report.update(labelled=True, metrics=metrics, vqa_score=round(100 * soft_score, 2),
                      majority_baseline={"answer": majority, "overall": baseline["overall"]},
                      num_unlabelled_questions=len(split_ids) - len(labelled))
    if examples:
        from .examples_vqa import save_vqa_split_examples
        from .vqa_metrics import DEFAULT_EVALUATOR

        report["examples"] = str(save_vqa_split_examples(prepared, target.split, pairs, examples,
                                                         sibling_path(report_path, "-examples.png"),
                                                         evaluator=evaluator or DEFAULT_EVALUATOR))
    write_report(report, report_path)
    return report, report_path
