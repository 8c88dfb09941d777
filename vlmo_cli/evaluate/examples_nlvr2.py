"""``vlmo eval nlvr2 --examples N``: a PNG of N examples, each with its two images, the statement, the model's
prediction and the label, marked right (green) or wrong (red).

Which examples: :func:`~vlmo_cli.evaluate.examples_choice.mixed_picks` (deterministic, half right and half wrong
where the split has both, spread over the split).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .examples_choice import mixed_picks
from .examples_draw import (BACKGROUND, FRAME_WIDTH, HIT_COLOUR, MISS_COLOUR, PAD, TEXT, Cell, default_font,
                            line_height, paste_tile, save_png, wrap_text)

if TYPE_CHECKING:
    from ..data.store import PreparedDataset

STATEMENT_LINES = 6
TEXT_WIDTH = 300
LEGEND = ("left, right: the two images | green frame: prediction right | red frame: prediction wrong | "
          "true = the statement holds for the pair")


@dataclass(frozen=True)
class Nlvr2Example:
    left: Cell
    right: Cell
    statement: str
    identifier: str
    prediction: bool
    label: bool

    @property
    def correct(self) -> bool:
        return self.prediction == self.label


def _card_height(tile_size: int, step: int) -> int:
    text = (1 + STATEMENT_LINES + 3) * step  # identifier, statement, prediction, label, verdict
    return max(tile_size, text) + 2 * PAD


def _legend_lines(width: int) -> list[str]:
    return wrap_text(LEGEND, default_font(), width - 2 * PAD, 3)


def nlvr2_examples_size(num_examples: int, *, tile_size: int = 160) -> tuple[int, int]:
    """(width, height) in pixels of the picture :func:`save_nlvr2_examples` draws: a legend, then one framed card
    an example (left image, right image, ``TEXT_WIDTH`` pixels of text)."""
    step = line_height(default_font())
    width = PAD + 2 * PAD + 2 * tile_size + PAD + 2 * PAD + TEXT_WIDTH + 2 * PAD + PAD
    legend_height = len(_legend_lines(width)) * step + PAD
    return width, PAD + legend_height + num_examples * (_card_height(tile_size, step) + PAD)


def save_nlvr2_examples(examples: Sequence[Nlvr2Example], path: str | Path, *, tile_size: int = 160) -> Path:
    """Draw ``examples`` into one PNG at ``path`` (parent folders created, written atomically); returns the path."""
    from PIL import Image, ImageDraw

    if tile_size < 16:
        raise ValueError(f"tile_size must be >= 16 pixels, got {tile_size}")
    font = default_font()
    step = line_height(font)
    width, height = nlvr2_examples_size(len(examples), tile_size=tile_size)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = PAD
    for line in _legend_lines(width):
        draw.text((PAD, y), line, fill=TEXT, font=font)
        y += step
    y += PAD
    card = _card_height(tile_size, step)
    for example in examples:
        colour = HIT_COLOUR if example.correct else MISS_COLOUR
        draw.rectangle([PAD, y, width - PAD - 1, y + card - 1], outline=colour, width=FRAME_WIDTH)
        inner_x, inner_y = PAD + 2 * PAD, y + PAD
        paste_tile(canvas, draw, example.left, (inner_x, inner_y), tile_size, font)
        paste_tile(canvas, draw, example.right, (inner_x + tile_size + PAD, inner_y), tile_size, font)
        text_x = inner_x + 2 * tile_size + PAD + 2 * PAD
        lines: list[tuple[str, tuple[int, int, int]]] = [(f"{example.identifier}", (90, 90, 90))]
        lines += [(line, TEXT) for line in wrap_text(example.statement, font, TEXT_WIDTH, STATEMENT_LINES)]
        lines.append((f"predicted: {str(example.prediction).lower()}", colour))
        lines.append((f"label: {str(example.label).lower()}", TEXT))
        lines.append(("RIGHT" if example.correct else "WRONG", colour))
        for row, (text, fill) in enumerate(lines):
            draw.text((text_x, inner_y + row * step), text, fill=fill, font=font)
        y += card + PAD
    return save_png(canvas, path)


def pick_nlvr2_examples(prepared: PreparedDataset, split: str, predictions: Mapping[str, bool],
                        n: int) -> list[Nlvr2Example]:
    """Up to ``n`` examples of a prepared NLVR2 split that have a prediction, chosen by :func:`mixed_picks`."""
    rows = prepared.split(split)
    columns = rows.select_columns(["identifier", "sentence", "label"]).to_dict()
    candidates = [i for i, identifier in enumerate(columns["identifier"]) if str(identifier) in predictions]
    right = [predictions[str(columns["identifier"][i])] == bool(columns["label"][i]) for i in candidates]
    chosen = [candidates[j] for j in mixed_picks(right, n)]
    images = rows.select_columns(["image_0", "image_1"])
    examples = []
    for i in chosen:
        pair = images[i]
        identifier = str(columns["identifier"][i])
        examples.append(Nlvr2Example(left=pair["image_0"]["bytes"], right=pair["image_1"]["bytes"],
                                     statement=columns["sentence"][i], identifier=identifier,
                                     prediction=bool(predictions[identifier]), label=bool(columns["label"][i])))
    return examples


def save_nlvr2_split_examples(prepared: PreparedDataset, split: str, predictions: Mapping[str, bool], n: int,
                              path: str | Path) -> Path:
    """:func:`pick_nlvr2_examples` then :func:`save_nlvr2_examples` (what ``vlmo eval nlvr2 --examples N`` runs)."""
    return save_nlvr2_examples(pick_nlvr2_examples(prepared, split, predictions, n), path)
