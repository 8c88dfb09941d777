"""``vlmo eval vqa --examples N``: a PNG of N questions, each with its image, the question, the model's answer and
the annotators' answers, every answer with its VQA score.

A score is the official per-question accuracy (:func:`~vlmo_cli.evaluate.vqa_metrics.vqa_accuracy`, under the
evaluator the report used) that the answer gets as the prediction: the predicted answer's score is what the question
adds to the reported accuracy; a gold answer's score shows what answering it would have earned (``xK`` = K of the
annotators gave it). Which questions: :func:`~vlmo_cli.evaluate.examples_choice.mixed_picks` (deterministic, half
with a score above 0 and half with 0 where the split has both, spread over the split).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .examples_choice import mixed_picks, spread
from .examples_draw import (BACKGROUND, HIT_COLOUR, MISS_COLOUR, PAD, PARTIAL_COLOUR, QUERY_COLOUR, TEXT, Cell,
                            default_font, fit_line, line_height, paste_tile, save_png, wrap_text)

if TYPE_CHECKING:
    from ..data.store import PreparedDataset

QUESTION_LINES = 3
GOLD_LINES = 5
TEXT_WIDTH = 440


@dataclass(frozen=True)
class GoldAnswer:
    answer: str
    count: int  # annotators who gave it
    score: float  # VQA accuracy of this answer as the prediction


@dataclass(frozen=True)
class VqaExample:
    """One question to draw. ``score`` / ``gold`` are ``None`` / empty for a question without annotations."""

    image: Cell
    question: str
    question_id: int
    prediction: str
    score: float | None = None
    gold: list[GoldAnswer] = field(default_factory=list)
    question_type: str = ""


def gold_answers(answers: Sequence[str], evaluator: str) -> list[GoldAnswer]:
    """The distinct annotators' answers, most given first (ties alphabetical), each with its VQA score."""
    from .vqa_metrics import vqa_accuracy

    counts = Counter(answers)
    ordered = sorted(counts, key=lambda a: (-counts[a], a))
    return [GoldAnswer(a, counts[a], vqa_accuracy(a, list(answers), evaluator)) for a in ordered]


def score_colour(score: float | None) -> tuple[int, int, int]:
    """Green for full credit, amber for partial credit, red for none, blue when there is nothing to score."""
    if score is None:
        return QUERY_COLOUR
    return HIT_COLOUR if score >= 1 else PARTIAL_COLOUR if score > 0 else MISS_COLOUR


def legend(evaluator: str | None) -> str:
    how = f"the {evaluator} evaluator's" if evaluator else "the official"
    return (f"score: {how} VQA accuracy of that answer as the prediction | xK: K annotators gave it | "
            "frame: green = score 1, amber = 0 < score < 1, red = 0, blue = no annotations")


def _lines_per_card() -> int:
    return 1 + QUESTION_LINES + 1 + 1 + GOLD_LINES  # header, question, prediction, "gold answers:", answers


def _legend_lines(text: str, width: int) -> list[str]:
    return wrap_text(text, default_font(), width - 2 * PAD, 3)


def vqa_examples_size(num_examples: int, *, tile_size: int = 160, evaluator: str | None = None) -> tuple[int, int]:
    """(width, height) in pixels of the picture :func:`save_vqa_examples` draws: a legend on top, then one card a
    question (the image tile left, ``TEXT_WIDTH`` pixels of text right)."""
    step = line_height(default_font())
    width = PAD + tile_size + 2 * PAD + TEXT_WIDTH + PAD
    card = max(tile_size, _lines_per_card() * step)
    legend_height = len(_legend_lines(legend(evaluator), width)) * step + PAD
    return width, PAD + legend_height + num_examples * (card + PAD)


def save_vqa_examples(examples: Sequence[VqaExample], path: str | Path, *, tile_size: int = 160,
                      evaluator: str | None = None) -> Path:
    """Draw ``examples`` into one PNG at ``path`` (parent folders created, written atomically); returns the path."""
    from PIL import Image, ImageDraw

    if tile_size < 16:
        raise ValueError(f"tile_size must be >= 16 pixels, got {tile_size}")
    font = default_font()
    step = line_height(font)
    width, height = vqa_examples_size(len(examples), tile_size=tile_size, evaluator=evaluator)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = PAD
    for line in _legend_lines(legend(evaluator), width):
        draw.text((PAD, y), line, fill=TEXT, font=font)
        y += step
    y += PAD
    card = max(tile_size, _lines_per_card() * step)
    text_x = PAD + tile_size + 2 * PAD
    for example in examples:
        colour = score_colour(example.score)
        paste_tile(canvas, draw, example.image, (PAD, y), tile_size, font, colour)
        lines: list[tuple[str, tuple[int, int, int]]] = []
        kind = f" ({example.question_type})" if example.question_type else ""
        lines.append((f"question {example.question_id}{kind}", (90, 90, 90)))
        lines += [(line, TEXT) for line in wrap_text(f"Q: {example.question}", font, TEXT_WIDTH, QUESTION_LINES)]
        predicted = f"predicted: {example.prediction}"
        if example.score is not None:
            predicted = f"predicted: {fit_line(example.prediction, font, TEXT_WIDTH - 120)}   score {example.score:.2f}"
        lines.append((fit_line(predicted, font, TEXT_WIDTH), colour))
        if example.gold:
            lines.append(("gold answers (xK annotators, score):", TEXT))
            shown = example.gold if len(example.gold) <= GOLD_LINES else example.gold[:GOLD_LINES - 1]
            for gold in shown:
                answer = fit_line(gold.answer, font, TEXT_WIDTH - 140)
                lines.append((f"  {answer}  x{gold.count}  {gold.score:.2f}", score_colour(gold.score)))
            if len(shown) < len(example.gold):
                lines.append((f"  ... {len(example.gold) - len(shown)} more answers", TEXT))
        else:
            lines.append(("no gold answers (unlabelled split)", TEXT))
        for row, (text, fill) in enumerate(lines):
            draw.text((text_x, y + row * step), text, fill=fill, font=font)
        y += card + PAD
    return save_png(canvas, path)


# ----------------------------------------------------------------------------------- from a prepared VQA split
def _image_rows(prepared: PreparedDataset, split: str, indices: Iterable[int], image_rows: Sequence[int]) -> list[int]:
    """Rows of the split's (concatenated) image table for question rows ``indices`` (``a+b`` splits offset)."""
    parts = [p for p in split.split("+") if p]
    offsets = prepared.image_row_offsets(split)
    ends, total = [], 0
    for part in parts:
        total += prepared.manifest["splits"][part]
        ends.append(total)
    out = []
    for index in indices:
        part = next(i for i, end in enumerate(ends) if index < end)
        out.append(int(image_rows[index]) + offsets[part])
    return out


def pick_vqa_examples(prepared: PreparedDataset, split: str, predictions: Iterable[tuple[int, str]], n: int,
                      evaluator: str) -> list[VqaExample]:
    """Up to ``n`` examples of a prepared VQA split and the model's ``(question_id, answer)`` predictions (the first
    answer of a repeated question id counts, as in the scored results). Labelled questions are chosen by
    :func:`mixed_picks` on "score above 0"; a split without annotations is sampled evenly."""
    from .vqa_metrics import vqa_accuracy

    predicted: dict[int, str] = {}
    for qid, answer in predictions:
        predicted.setdefault(int(qid), answer)
    rows = prepared.split(split).select_columns(
        ["question_id", "question", "answers", "question_type", "image_row"]).to_dict()
    candidates = [i for i, q in enumerate(rows["question_id"]) if int(q) in predicted]
    labelled = [i for i in candidates if rows["answers"][i]]
    scores = {i: vqa_accuracy(predicted[int(rows["question_id"][i])], rows["answers"][i], evaluator)
              for i in labelled}
    if labelled:
        chosen = [labelled[j] for j in mixed_picks([scores[i] > 0 for i in labelled], n)]
    else:
        chosen = [candidates[j] for j in spread(len(candidates), n)]
    gold = {i: gold_answers(rows["answers"][i], evaluator) for i in chosen if rows["answers"][i]}
    table = prepared.image_table(split)
    images = [table[r]["image"]["bytes"] for r in _image_rows(prepared, split, chosen, rows["image_row"])]
    return [VqaExample(image=image, question=rows["question"][i], question_id=int(rows["question_id"][i]),
                       prediction=predicted[int(rows["question_id"][i])], score=scores.get(i), gold=gold.get(i, []),
                       question_type=rows["question_type"][i] or "")
            for i, image in zip(chosen, images)]


def save_vqa_split_examples(prepared: PreparedDataset, split: str, predictions: Iterable[tuple[int, str]], n: int,
                            path: str | Path, *, evaluator: str) -> Path:
    """:func:`pick_vqa_examples` then :func:`save_vqa_examples` (the hook ``vlmo eval vqa --examples N`` calls)."""
    examples = pick_vqa_examples(prepared, split, predictions, n, evaluator)
    return save_vqa_examples(examples, path, evaluator=evaluator)
