"""Turning an image reference into validated encoded bytes (runs in the prepare workers).

Images are stored encoded (JPEG/PNG/WebP bytes as found) so a prepared directory stays close to the source size. They
are fully decoded once here, so a truncated or unreadable file is caught at prepare time, not in the middle of a
training run. With ``max_size`` the shorter side is limited (aspect kept) and the image re-encoded as JPEG (PNG when it
has transparency), which is what makes re-reading a 224/384 px training set fast.
"""

from __future__ import annotations

import io
from pathlib import Path

from .sources.base import ImageRef

KEEP_FORMATS = {"JPEG", "PNG", "WEBP"}
JPEG_QUALITY = 92


def load_image_bytes(ref: ImageRef, max_size: int | None = None) -> tuple[bytes | None, str | None]:
    """``(bytes, None)`` for a usable image, ``(None, reason)`` otherwise. Never raises for bad input."""
    from PIL import Image

    if isinstance(ref, (bytes, bytearray)):
        data = bytes(ref)
    else:
        path = Path(ref)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, f"missing image: {path}"
        except OSError as exc:
            return None, f"unreadable image: {path} ({exc.strerror or exc})"
    if not data:
        return None, "unreadable image: empty file"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # full decode: catches truncated files that Image.verify() lets through
            fmt = img.format
            width, height = img.size
            if max_size and min(width, height) > max_size:
                return _reencode(img, max_size), None
            if fmt not in KEEP_FORMATS:
                return _reencode(img, None), None
    except Exception as exc:  # PIL raises many types for corrupt data
        return None, f"unreadable image: {type(exc).__name__}: {exc}"
    return data, None


def _reencode(img, max_size: int | None) -> bytes:
    from PIL import Image

    has_alpha = img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info)
    img = img.convert("RGBA" if has_alpha else "RGB")
    if max_size:
        width, height = img.size
        scale = max_size / min(width, height)
        img = img.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BICUBIC)
    out = io.BytesIO()
    if has_alpha:
        img.save(out, format="PNG", optimize=False)
    else:
        img.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def decode_rgb(data: bytes):
    """Encoded bytes -> RGB PIL image (used by the loaders).

    PIL rather than ``torchvision.io.decode_jpeg``: both give the same pixels (tested), the raw decode of
    decode_jpeg is 10-20 % faster, but the training transforms (RandAugment and the bicubic crop/resize) work on
    PIL images, and turning its tensor back into one costs about what it saved; torchvision 0.29 also deprecates
    its image decoders."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")
