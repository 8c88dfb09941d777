"""Drawing pieces shared by the example pictures of ``vlmo eval --examples``: PIL's default font (no font files),
word wrapping to a pixel width, image cells from bytes/paths/PIL images, the frame colours and the atomic PNG write.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Union

from vlmo_cli.outputs import atomic_file

if TYPE_CHECKING:
    from PIL import Image, ImageDraw, ImageFont

    Cell = Union[str, bytes, Path, Image.Image]
    Font = Union[ImageFont.ImageFont, ImageFont.FreeTypeFont]
else:
    Cell = object
    Font = object

PAD = 4
HIT_COLOUR = (40, 160, 60)
PARTIAL_COLOUR = (220, 140, 20)
MISS_COLOUR = (200, 50, 50)
QUERY_COLOUR = (60, 90, 200)
BACKGROUND = (255, 255, 255)
PANEL = (240, 240, 240)
TEXT = (0, 0, 0)
FRAME_WIDTH = 3


def default_font() -> Font:
    from PIL import ImageFont

    return ImageFont.load_default()


def line_height(font: Font) -> int:
    """Pixels from one text line to the next."""
    left, top, right, bottom = font.getbbox("Ag|")
    return int(bottom - min(top, 0)) + 2


def fit_line(line: str, font: Font, width: int) -> str:
    """Cut a line that is too wide (e.g. one very long word) to ``width`` pixels, ending it with '...'."""
    if font.getlength(line) <= width:
        return line
    while line and font.getlength(line + "...") > width:
        line = line[:-1]
    return line + "..."


def wrap_text(text: str, font: Font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; the last kept line ends with an ellipsis if text was cut."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= width or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    lines = [fit_line(line, font, width) for line in lines]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = fit_line(lines[-1] + " ...", font, width)
    return lines


def open_cell_image(cell: Cell) -> Image.Image | None:
    """The image a cell holds (``None`` for a caption ``str``)."""
    from PIL import Image

    if isinstance(cell, Image.Image):
        return cell
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(cell)))
    if isinstance(cell, Path):
        return Image.open(cell)
    return None


def paste_tile(canvas: Image.Image, draw: ImageDraw.ImageDraw, cell: Cell, origin: tuple[int, int], size: int,
               font: Font, border: tuple[int, int, int] | None = None) -> None:
    """An image scaled into a ``size`` square (aspect kept, centred), or text on a light panel: a caption, or
    "unreadable image" for bytes PIL cannot decode; then an optional frame."""
    from PIL import ImageOps, UnidentifiedImageError

    x, y = origin
    try:
        image = open_cell_image(cell)
        thumb = None if image is None else ImageOps.contain(image.convert("RGB"), (size, size))
    except (OSError, UnidentifiedImageError, ValueError):
        thumb, cell = None, "unreadable image"
    if thumb is not None:
        canvas.paste(thumb, (x + (size - thumb.width) // 2, y + (size - thumb.height) // 2))
    else:
        draw.rectangle([x, y, x + size - 1, y + size - 1], fill=PANEL)
        step = line_height(font)
        for row, line in enumerate(wrap_text(str(cell), font, size - 2 * PAD, max(1, (size - 2 * PAD) // step))):
            draw.text((x + PAD, y + PAD + row * step), line, fill=TEXT, font=font)
    if border is not None:
        draw.rectangle([x, y, x + size - 1, y + size - 1], outline=border, width=FRAME_WIDTH)


def save_png(canvas: Image.Image, path: str | Path) -> Path:
    """Write ``canvas`` as PNG atomically (parent folders created); returns the path."""
    target = Path(path)
    with atomic_file(target) as temp:
        canvas.save(temp, format="PNG")
    return target
