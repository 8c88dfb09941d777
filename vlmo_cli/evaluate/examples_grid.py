"""A PNG grid of top retrievals: one row per query, the query first, then its best K results with their scores.

Recall numbers say how often the right item is near the top; looking at the top of a few rankings says why
(near-duplicates, captions that fit several images, a wrong ground truth). Captions are drawn with PIL's default
font so the grid needs no font files.

Cells: a query or a result is a ``PIL.Image.Image``, encoded image ``bytes``, an image file path
(``pathlib.Path``), or a ``str`` caption (drawn as text). Text -> image retrieval puts a caption in the query cell
and images in the result cells; image -> text retrieval the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .examples_draw import (BACKGROUND, HIT_COLOUR, MISS_COLOUR, PAD, QUERY_COLOUR, TEXT, Cell, default_font,
                            line_height, paste_tile, save_png, wrap_text)

if TYPE_CHECKING:
    from PIL import Image, ImageDraw, ImageFont

CAPTION_LINES = 3


def grid_size(num_queries: int, k: int, *, tile_size: int = 160, truth_column: bool = False) -> tuple[int, int]:
    """The (width, height) in pixels of the grid :func:`save_retrieval_grid` draws for these arguments.

    Each cell is a ``tile_size`` square above ``CAPTION_LINES`` lines of text; cells are separated and surrounded
    by ``PAD`` pixels. With ``truth_column`` the grid has one more column (the ground truth) and a legend line on top.
    """
    step = line_height(default_font())
    cell_height = tile_size + CAPTION_LINES * step
    width = (k + 1 + int(truth_column)) * (tile_size + PAD) + PAD
    height = num_queries * (cell_height + PAD) + PAD + (step + PAD if truth_column else 0)
    return width, height


LEGEND = ("blue: the query   green frame: a ground-truth match   red frame: not a match   "
          "last column: the ground truth when it is not in the top K")


def _draw_cell(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    cell: Cell,
    caption: str,
    origin: tuple[int, int],
    tile_size: int,
    border: tuple[int, int, int] | None,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> None:
    x, y = origin
    paste_tile(canvas, draw, cell, origin, tile_size, font, border)
    for row, line in enumerate(wrap_text(caption, font, tile_size, CAPTION_LINES)):
        draw.text((x, y + tile_size + row * line_height(font)), line, fill=TEXT, font=font)


def save_retrieval_grid(
    queries: Sequence[Cell],
    results: Sequence[Sequence[Cell]],
    scores: Sequence[Sequence[float]],
    path: str | Path,
    *,
    hits: Sequence[Sequence[bool]] | None = None,
    query_labels: Sequence[str] | None = None,
    tile_size: int = 160,
    truths: Sequence[Cell | None] | None = None,
) -> Path:
    """Draw the top results of ``len(queries)`` queries into one PNG and write it to ``path``.

    Args:
        queries: one cell per row (a caption for text -> image retrieval, an image for image -> text).
        results: per query, its K best results, best first (rows shorter than the longest leave blank cells).
        scores: per query, the scores of those results (printed under each result).
        path: the PNG to write (parent folders are created).
        hits: per query and result, whether it is a ground-truth match (green frame) or not (red frame).
        query_labels: text under each query cell (default ``"query i"``).
        tile_size: side of each square tile in pixels.
        truths: per query, its ground truth when the top K missed it (drawn in a last column, green frame), or
            ``None`` when it is among the results; giving it also draws a legend line above the grid.

    Returns:
        The path written; the image is ``grid_size(len(queries), K, tile_size=tile_size)`` pixels.
    """
    from PIL import Image, ImageDraw

    if len(results) != len(queries) or len(scores) != len(queries):
        raise ValueError(
            f"need one result row and one score row per query: {len(queries)} queries, "
            f"{len(results)} result rows, {len(scores)} score rows"
        )
    if hits is not None and len(hits) != len(queries):
        raise ValueError(f"hits has {len(hits)} rows for {len(queries)} queries")
    if truths is not None and len(truths) != len(queries):
        raise ValueError(f"truths has {len(truths)} entries for {len(queries)} queries")
    if tile_size < 16:
        raise ValueError(f"tile_size must be >= 16 pixels, got {tile_size}")
    k = max((len(row) for row in results), default=0)
    font = default_font()
    width, height = grid_size(len(queries), k, tile_size=tile_size, truth_column=truths is not None)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    cell_height = tile_size + CAPTION_LINES * line_height(font)
    top = PAD
    if truths is not None:
        draw.text((PAD, PAD), LEGEND, fill=TEXT, font=font)
        top += line_height(font) + PAD
    for row, query in enumerate(queries):
        y = top + row * (cell_height + PAD)
        label = query_labels[row] if query_labels is not None else f"query {row}"
        _draw_cell(canvas, draw, query, label, (PAD, y), tile_size, QUERY_COLOUR, font)
        if len(scores[row]) < len(results[row]):
            raise ValueError(f"query {row}: {len(results[row])} results but {len(scores[row])} scores")
        for rank, result in enumerate(results[row]):
            border = None
            if hits is not None:
                border = HIT_COLOUR if hits[row][rank] else MISS_COLOUR
            x = PAD + (rank + 1) * (tile_size + PAD)
            caption = f"#{rank + 1}: {float(scores[row][rank]):.3f}"
            _draw_cell(canvas, draw, result, caption, (x, y), tile_size, border, font)
        if truths is not None:
            x = PAD + (k + 1) * (tile_size + PAD)
            if truths[row] is None:
                _draw_cell(canvas, draw, "found in the top K", "ground truth", (x, y), tile_size, None, font)
            else:
                _draw_cell(canvas, draw, truths[row], f"ground truth: not in the top {k}", (x, y), tile_size,
                           HIT_COLOUR, font)
    return save_png(canvas, path)
