"""VQA answer normalisation, vocabulary and soft scores, as the official VQA tools and VLMo's ``write_vqa.py`` do it.

- answers are normalised with VLMo/ViLT's ``normalize_word`` (:func:`vlmo_cli.evaluate.vqa_metrics.normalize_answer`:
  the official evaluator's punctuation and number/article/contraction steps, then commas removed).
- :func:`build_vocab`: normalised ``multiple_choice_answer`` kept when seen ``min_count`` (9) times -> 3129 answers on
  VQAv2 train+val; ordered by decreasing count, ties alphabetically, so the label ids are reproducible.
- :func:`soft_targets`: counts of the 10 raw answers -> 0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / >=4 annotators. Parity
  quirk kept by default: the raw answer strings are looked up in the normalised vocabulary without normalising them.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from ...evaluate.vqa_metrics import normalize_answer, soft_score


def build_vocab(answers: Iterable[str], min_count: int = 9) -> list[str]:
    """Normalised answers seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
    counts = Counter(normalize_answer(a) for a in answers)
    kept = [(a, n) for a, n in counts.items() if n >= min_count and a]
    return [a for a, _ in sorted(kept, key=lambda item: (-item[1], item[0]))]


def soft_targets(raw_answers: list[str], answer_to_id: dict[str, int], *, normalize_raw: bool = False
                 ) -> tuple[list[int], list[float]]:
    """(label ids, soft scores) of one question from its raw annotator answers."""
    counts = Counter(normalize_answer(a) if normalize_raw else a for a in raw_answers)
    labels, scores = [], []
    for answer, n in counts.items():
        if answer in answer_to_id:
            labels.append(answer_to_id[answer])
            scores.append(soft_score(n))
    return labels, scores
