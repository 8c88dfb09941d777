"""VQA accuracy exactly as the official evaluator computes it, plus the submission file and VLMo's training metric.

The evaluator is ``GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py`` (Python 2 code). Two versions
are implemented, quirks included; ``docs/vqa-evaluator.md`` lists every rule with an example.

``official`` -- master, commit a013f00 ("Fixed processing answers bug", 2021-03-11), the default:
  every ground-truth answer and the prediction get ``\\n``/``\\t`` -> space and outer whitespace stripped. If the
  stripped answers are not all identical, ``processPunctuation`` then ``processDigitArticle`` are applied to every
  answer *and* to the prediction; if they are all identical nothing else is applied to either (raw exact match).

``legacy`` -- the file before a013f00 (last changed in 458a8b2, 2016-10-08; LAVIS and ALBEF carry copies of it):
  the prediction gets the whitespace step and **always** both normalisers; the ground-truth answers are never
  whitespace-cleaned, and only when they are not all identical get ``processPunctuation`` (no lowercasing, no
  number words, no articles).

Shared by both:

- ``processPunctuation``: for each of 21 characters, if the *original* text has it followed or preceded by a
  space, or has a comma between two digits anywhere, the character is deleted, otherwise replaced by a space.
  Then periods not followed by a digit are deleted by ``(?!<=\\d)(\\.)(?!\\d)`` -- a malformed look-behind that
  really is only the look-ahead -- and ``re.UNICODE`` is passed in the *count* position, so at most 32 periods
  are removed. ``\\d`` is ASCII-only (Python 2 ``re`` without the UNICODE flag).
- ``processDigitArticle``: lowercase, split on whitespace, number words ``none, zero .. ten`` -> digits, drop
  ``a, an, the``, map contraction typos (``dont`` -> ``don't``; the capitalised keys such as ``Im`` can never
  match after lowercasing), join with single spaces.
- Accuracy: for each ground-truth answer, ``min(1, matches among the *other* answers / 3)``, averaged. "Other" is
  decided by comparing the answer *dicts* (which differ by ``answer_id`` in official files). By the number k of
  matching answers: 0, 0.3, 0.6, 0.9, 1.0 for k = 0, 1, 2, 3, >=4.
- Per question ``round(100 * accuracy, 2)``; ``overall`` and per answer type / question type are means of the
  unrounded accuracies, then ``round(100 * mean, 2)`` -- Python 2's ``round``, which rounds exact ties away from
  zero (1 right of 800 questions gives 0.13, where Python 3's ``round`` gives 0.12).

Results files are checked like ``vqa.py::loadRes``: the set of question ids must equal the annotated one. A question
id given twice with different answers is refused (the original silently keeps the last one) unless ``dedupe``
says which to keep.
"""

from __future__ import annotations

import decimal
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmo_cli.data.sources.vqa_answers import (  # noqa: F401 - the normaliser is the data side's; re-exported
    ARTICLES,
    CONTRACTIONS,
    NUMBER_WORDS,
    PUNCTUATION,
    both_normalisers,
    clean_whitespace,
    normalize_answer,
    normalize_prediction,
    process_digit_article,
    process_punctuation,
    soft_score,
)
from vlmo_cli.errors import DataError
from vlmo_cli.evaluate.report import write_json

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: ``--evaluator`` name -> (commit of GT-Vision-Lab/VQA it follows, description)
EVALUATORS: dict[str, tuple[str, str]] = {
    "official": ("a013f00", "GT-Vision-Lab/VQA vqaEval.py master (a013f00, 2021-03-11), with its quirks"),
    "legacy": ("458a8b2", "GT-Vision-Lab/VQA vqaEval.py before a013f00 (458a8b2, 2016; the LAVIS/ALBEF copy)"),
}
DEFAULT_EVALUATOR = "official"
EVALUATOR = EVALUATORS[DEFAULT_EVALUATOR][1]
#: ``dedupe`` values of :func:`score_results` (``None`` refuses conflicting duplicates)
DEDUPE_CHOICES = ("first", "last")

def _answer_records(answers: Sequence[Any], where: str) -> list[dict[str, Any]]:
    """Ground-truth answers as dicts; bare strings get distinct ``answer_id`` so leave-one-out is positional."""
    if not isinstance(answers, (list, tuple)) or not answers:
        raise DataError(f"{where}: 'answers' must be a non-empty list, got {answers!r:.80}")
    records = []
    for position, answer in enumerate(answers):
        if isinstance(answer, str):
            records.append({"answer": answer, "answer_id": position + 1})
        elif isinstance(answer, Mapping) and isinstance(answer.get("answer"), str):
            records.append(dict(answer))
        else:
            raise DataError(f"{where}: answer {position} must be a string or an object with a string 'answer'")
    return records


def check_evaluator(evaluator: str) -> str:
    """``evaluator`` if it is a known name, else a :class:`DataError` listing the allowed ones."""
    if evaluator not in EVALUATORS:
        raise DataError(f"unknown VQA evaluator {evaluator!r}; allowed: {', '.join(EVALUATORS)}")
    return evaluator


def _compared_official(prediction: str, answers: list[str]) -> tuple[str, list[str]]:
    """Master (a013f00): whitespace on both sides; both normalisers on both sides only when the answers differ."""
    prediction, answers = clean_whitespace(prediction), [clean_whitespace(answer) for answer in answers]
    if len(set(answers)) > 1:
        prediction, answers = both_normalisers(prediction), [both_normalisers(answer) for answer in answers]
    return prediction, answers


def _compared_legacy(prediction: str, answers: list[str]) -> tuple[str, list[str]]:
    """Before a013f00: the prediction always fully normalised; raw answers punctuation-processed if they differ."""
    if len(set(answers)) > 1:
        answers = [process_punctuation(answer) for answer in answers]
    return normalize_prediction(prediction), answers


_COMPARED = {"official": _compared_official, "legacy": _compared_legacy}


def _leave_one_out(prediction: str, records: list[dict[str, Any]]) -> float:
    """Mean over held-out annotators of ``min(1, matches among the other answer dicts / 3)``."""
    per_annotator = []
    for held_out in records:
        matches = sum(1 for other in records if other != held_out and other["answer"] == prediction)
        per_annotator.append(min(1, float(matches) / 3))
    return float(sum(per_annotator)) / len(per_annotator)


def vqa_accuracy(
    prediction: str, answers: Sequence[str | Mapping[str, Any]], evaluator: str = DEFAULT_EVALUATOR
) -> float:
    """Official accuracy (0..1) of one predicted answer against the annotators' answers.

    Args:
        prediction: the raw predicted answer.
        answers: the ground-truth answers (10 in VQAv2), as strings or official ``{"answer", "answer_id", ...}``.
        evaluator: ``official`` (master, a013f00) or ``legacy`` (before it); see the module docstring.
    """
    records = _answer_records(list(answers), "answers")
    prediction, compared = _COMPARED[check_evaluator(evaluator)](prediction, [r["answer"] for r in records])
    for record, answer in zip(records, compared):
        record["answer"] = answer
    return _leave_one_out(prediction, records)


def round_like_python2(value: float, digits: int = 2) -> float:
    """Python 2's ``round``: the nearest multiple of ``10**-digits``, exact ties away from zero."""
    exact = decimal.Decimal(value)  # the float's exact binary value, as Python 2 rounds it
    return float(exact.quantize(decimal.Decimal(1).scaleb(-digits), rounding=decimal.ROUND_HALF_UP))


# --- official-format files ------------------------------------------------------------------------------------


def _load_json(source: str | Path | Any) -> Any:
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            with path.open(encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            raise DataError(f"{path}: file not found") from None
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON ({error})") from None
    return source


def _entries(source: str | Path | Any, key: str, what: str) -> list[dict[str, Any]]:
    data = _load_json(source)
    if isinstance(data, Mapping):
        if key not in data:
            raise DataError(f"{what}: expected an object with a {key!r} list, found keys {sorted(data)[:8]}")
        data = data[key]
    if not isinstance(data, list) or not all(isinstance(entry, Mapping) for entry in data):
        raise DataError(f"{what}: {key!r} must be a list of objects")
    return list(data)


def _question_id(entry: Mapping[str, Any], where: str) -> int:
    qid = entry.get("question_id")
    if isinstance(qid, bool) or not isinstance(qid, int):
        raise DataError(f"{where}: 'question_id' must be an integer, got {qid!r}")
    return qid


def load_vqa_questions(source: str | Path | Mapping[str, Any] | list) -> list[dict[str, Any]]:
    """Questions from an official questions file (``{"questions": [{"question_id", "image_id", "question"}]}``)."""
    label = f"questions {source if isinstance(source, (str, Path)) else ''}".strip()
    questions = _entries(source, "questions", label)
    for position, question in enumerate(questions):
        _question_id(question, f"{label}[{position}]")
    return questions


def load_vqa_annotations(source: str | Path | Mapping[str, Any] | list) -> list[dict[str, Any]]:
    """Annotations from an official file (``{"annotations": [{"question_id", "answers", "answer_type", ...}]}``)."""
    label = f"annotations {source if isinstance(source, (str, Path)) else ''}".strip()
    annotations = _entries(source, "annotations", label)
    for position, annotation in enumerate(annotations):
        qid = _question_id(annotation, f"{label}[{position}]")
        for key in ("answers", "answer_type", "question_type"):
            if key not in annotation:
                raise DataError(f"{label}: question {qid} has no {key!r}")
    return annotations


def load_vqa_results(source: str | Path | list) -> list[dict[str, Any]]:
    """A results file: a JSON list ``[{"question_id": int, "answer": str}, ...]``."""
    label = f"results {source if isinstance(source, (str, Path)) else ''}".strip()
    data = _load_json(source)
    if not isinstance(data, list):
        raise DataError(f"{label}: must be a JSON list of {{'question_id', 'answer'}} objects")
    for position, entry in enumerate(data):
        if not isinstance(entry, Mapping):
            raise DataError(f"{label}[{position}]: must be an object with 'question_id' and 'answer'")
        qid = _question_id(entry, f"{label}[{position}]")
        if not isinstance(entry.get("answer"), str):
            raise DataError(f"{label}: question {qid} has a non-string answer {entry.get('answer')!r}")
    return list(data)


def _describe_ids(ids: Iterable[int], limit: int = 5) -> str:
    ids = sorted(ids)
    shown = ", ".join(str(qid) for qid in ids[:limit])
    return f"{len(ids)} (e.g. {shown}{', ...' if len(ids) > limit else ''})"


@dataclass(frozen=True)
class KeptResults:
    """Results reduced to one answer per question id, and what was dropped on the way."""

    answers: dict[int, str]
    num_dropped: int
    conflicting_ids: list[int]


def keep_one_per_question(results: Sequence[Mapping[str, Any]], dedupe: str | None) -> KeptResults:
    """One answer per question id. A repeated id with the *same* answer is dropped silently (it cannot change a
    score); repeated ids with *different* answers raise :class:`DataError` naming them, unless ``dedupe`` is
    ``"first"`` or ``"last"`` (which entry to keep)."""
    if dedupe is not None and dedupe not in DEDUPE_CHOICES:
        raise DataError(f"--dedupe {dedupe!r}: allowed: {', '.join(DEDUPE_CHOICES)}")
    answers: dict[int, str] = {}
    conflicting: set[int] = set()
    for entry in results:
        qid, answer = entry["question_id"], entry["answer"]
        if qid in answers:
            if answers[qid] != answer:
                conflicting.add(qid)
            if dedupe == "first":
                continue
        answers[qid] = answer
    if conflicting and dedupe is None:
        raise DataError(f"results: {_describe_ids(conflicting)} question ids have several different answers; "
                        "keep one with --dedupe first or --dedupe last")
    return KeptResults(answers=answers, num_dropped=len(results) - len(answers), conflicting_ids=sorted(conflicting))


def _check_coverage(annotated: Iterable[int], predicted: Iterable[int]) -> None:
    missing = set(annotated) - set(predicted)
    extra = set(predicted) - set(annotated)
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing predictions for {_describe_ids(missing)} question ids")
        if extra:
            problems.append(f"{_describe_ids(extra)} predicted question ids are not in the annotations")
        raise DataError("results do not match the annotated questions: " + "; ".join(problems))


def score_results(
    results: str | Path | list,
    questions: str | Path | Mapping[str, Any] | list | None,
    annotations: str | Path | Mapping[str, Any] | list,
    *,
    per_question: bool = False,
    evaluator: str = DEFAULT_EVALUATOR,
    dedupe: str | None = None,
) -> dict[str, Any]:
    """Score a results file against the annotations, as ``vqaEval.evaluate`` does.

    Args:
        results: ``[{"question_id", "answer"}]`` (path or loaded list); must cover exactly the annotated ids.
        questions: the questions file (path or loaded), used to check that every annotated question exists;
            ``None`` skips the check.
        annotations: the annotations file (path or loaded).
        per_question: also return ``per_question`` = ``{question_id: round(100 * accuracy, 2)}``.
        evaluator: ``official`` (master, a013f00) or ``legacy`` (before it).
        dedupe: ``None`` refuses a question id given with different answers; ``first`` / ``last`` keeps that one.

    Returns:
        ``overall``, ``per_answer_type``, ``per_question_type`` (percent, 2 decimals), counts, the evaluator and the
        commit it follows.
    """
    check_evaluator(evaluator)
    annotation_list = load_vqa_annotations(annotations)
    result_list = load_vqa_results(results)
    annotated = {annotation["question_id"]: annotation for annotation in annotation_list}
    if not annotated:
        raise DataError("annotations: no questions to score")
    if questions is not None:
        known = {question["question_id"] for question in load_vqa_questions(questions)}
        unknown = annotated.keys() - known
        if unknown:
            raise DataError(f"annotations: {_describe_ids(unknown)} question ids are not in the questions file")
    kept = keep_one_per_question(result_list, dedupe)
    predicted = kept.answers
    _check_coverage(annotated, predicted)

    overall: list[float] = []
    by_question_type: dict[str, list[float]] = {}
    by_answer_type: dict[str, list[float]] = {}
    question_scores: dict[int, float] = {}
    for qid, annotation in annotated.items():
        records = _answer_records(annotation["answers"], f"question {qid}")
        accuracy = vqa_accuracy(predicted[qid], records, evaluator)
        overall.append(accuracy)
        by_question_type.setdefault(annotation["question_type"], []).append(accuracy)
        by_answer_type.setdefault(annotation["answer_type"], []).append(accuracy)
        if per_question:
            question_scores[qid] = round_like_python2(100 * accuracy)

    def percent(values: list[float]) -> float:
        return round_like_python2(100 * float(sum(values)) / len(values))

    commit, description = EVALUATORS[evaluator]
    report: dict[str, Any] = {
        "overall": percent(overall),
        "per_answer_type": {name: percent(values) for name, values in by_answer_type.items()},
        "per_question_type": {name: percent(values) for name, values in by_question_type.items()},
        "num_questions": len(annotated),
        "num_results": len(result_list),
        "num_duplicate_results": kept.num_dropped,
        "num_conflicting_duplicates": len(kept.conflicting_ids),
        "dedupe": dedupe,
        "evaluator": evaluator,
        "evaluator_commit": commit,
        "evaluator_source": description,
    }
    if per_question:
        report["per_question"] = question_scores
    return report


@dataclass(frozen=True)
class SubmissionSummary:
    """What :func:`write_submission` wrote: entries, dropped duplicates (and how many disagreed) and the path."""

    path: Path
    num_written: int
    num_duplicates: int
    num_conflicting_duplicates: int


def write_submission(
    pairs: Iterable[tuple[int, str] | Mapping[str, Any]],
    path: str | Path,
    expected_question_ids: Iterable[int] | None,
) -> SubmissionSummary:
    """Write an EvalAI/official results file ``[{"question_id": int, "answer": str}]``, one entry per question.

    Duplicated question ids (e.g. from a distributed sampler that pads the last batch) are dropped, the **first**
    answer wins; duplicates are counted and logged, those with a different answer separately. With
    ``expected_question_ids`` (all ids of the split, e.g. every test2015 question for test-dev) the ids must match
    exactly -- a missing or foreign id raises :class:`DataError` before anything is written -- and entries are
    written in that order; otherwise in first-seen order. The file is replaced atomically.
    """
    answers: dict[int, str] = {}
    duplicates = conflicts = 0
    for position, pair in enumerate(pairs):
        if isinstance(pair, Mapping):
            qid, answer = pair.get("question_id"), pair.get("answer")
        else:
            qid, answer = pair
        if isinstance(qid, bool) or not isinstance(qid, int):
            try:
                qid = int(qid)  # numpy / torch integer scalars
            except (TypeError, ValueError):
                raise DataError(f"prediction {position}: question_id must be an integer, got {qid!r}") from None
        if not isinstance(answer, str):
            raise DataError(f"prediction {position} (question {qid}): answer must be a string, got {answer!r}")
        if qid in answers:
            duplicates += 1
            conflicts += answers[qid] != answer
            continue
        answers[qid] = answer

    order: list[int] = list(answers)
    if expected_question_ids is not None:
        order = [int(qid) for qid in expected_question_ids]
        expected = set(order)
        missing = expected - answers.keys()
        extra = answers.keys() - expected
        if missing:
            raise DataError(f"submission incomplete: no answer for {_describe_ids(missing)} question ids of the split")
        if extra:
            raise DataError(f"submission has {_describe_ids(extra)} question ids that are not in the split")
        order = list(dict.fromkeys(order))
    if duplicates:
        logger.warning(
            "submission: dropped %d duplicated question ids (first answer kept; %d had a different answer)",
            duplicates,
            conflicts,
        )
    target = write_json([{"question_id": qid, "answer": answers[qid]} for qid in order], path, indent=None)
    return SubmissionSummary(
        path=target, num_written=len(order), num_duplicates=duplicates, num_conflicting_duplicates=conflicts
    )


# --- training-time metric -------------------------------------------------------------------------------------


def soft_vqa_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """VLMo's ``VQAScore`` per sample: the soft target score of the arg-max answer (``[B, A]`` -> ``[B]``).

    It equals the official accuracy up to answer normalisation and the closed answer vocabulary.
    """
    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(f"logits and targets must both be [B, A]; got {list(logits.shape)} and {list(targets.shape)}")
    best = logits.detach().argmax(dim=1, keepdim=True)
    return targets.detach().to(best.device).float().gather(1, best).squeeze(1)


class SoftVQAScore:
    """Running mean of :func:`soft_vqa_scores` over batches (VLMo's validation ``vqa_score``), in 0..1."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        scores = soft_vqa_scores(logits, targets)
        self.total += float(scores.double().sum().item())
        self.count += int(scores.numel())

    def compute(self) -> float:
        return self.total / self.count if self.count else 0.0

    def reset(self) -> None:
        self.total, self.count = 0.0, 0
