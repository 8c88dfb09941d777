"""Helpers shared by the pair readers: column lookup, grouping captions per image, seeded validation hold-out."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Iterable

from ...errors import DataError

IMAGE_COLUMNS = ("image", "image_path", "filepath", "file_name", "filename", "path", "img", "url", "jpg")
CAPTION_COLUMNS = ("caption", "captions", "text", "sentence", "sentences", "raw", "txt")


def pick_column(available: Iterable[str], wanted: str | None, candidates: tuple[str, ...], what: str, where: str) -> str:
    available = list(available)
    if wanted is not None:
        if wanted not in available:
            raise DataError(f"{where}: no {what} column {wanted!r}; columns are {available}")
        return wanted
    for name in candidates:
        if name in available:
            return name
    raise DataError(f"{where}: cannot tell the {what} column among {available}; pass --{what}-col")


class Malformed(ValueError):
    """An annotation value of the wrong type (a number where text belongs, an object where a path belongs); readers
    catch it and skip the sample with this message as the manifest reason."""


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages: number, boolean, object, array, null, text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return "text" if isinstance(value, str) else type(value).__name__


def as_text(value: Any, what: str) -> str:
    """``value`` when it is text, else :class:`Malformed` ("malformed caption: a number, not text")."""
    if not isinstance(value, str):
        raise Malformed(f"malformed {what}: {json_type(value)}, not text")
    return value


def as_captions(value: Any) -> list[str]:
    """A caption cell (text or a list of texts; null entries ignored) -> non-empty stripped captions; any other
    value is :class:`Malformed`."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise Malformed(f"malformed caption: {json_type(value)}, not text")
    captions = []
    for item in value:
        text = as_text(item, "caption").strip() if item is not None else ""
        if text:
            captions.append(text)
    return captions


def as_label(value: Any) -> Any:
    """A class label: text or a whole number (``None``/``""`` pass through as missing); else :class:`Malformed`."""
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise Malformed(f"malformed label: {json_type(value)} {value!r}, not a class name or whole number")


def holdout(keys: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded set of distinct keys whose entries in ``keys`` (one per row; a key repeats for every row of the same
    image) add up to ``fraction`` of the rows as closely as the grouping allows; at least one key when fraction > 0.

    The distinct keys are visited in a seeded order and each is held out while it fits under the target; then the
    one remaining key that brings the held-out row count closest to the target is added when it improves it.
    """
    if fraction <= 0 or not keys:
        return set()
    if fraction >= 1:
        raise DataError(f"val fraction must lie in [0, 1), got {fraction}")
    counts = Counter(keys)
    target = fraction * len(keys)
    order = random.Random(seed).sample(sorted(counts), len(counts))
    held, taken = set(), 0
    for key in order:
        if taken + counts[key] <= target:
            held.add(key)
            taken += counts[key]
    rest = [key for key in order if key not in held]
    if rest:
        best = min(rest, key=lambda key: abs(taken + counts[key] - target))
        if not held or abs(taken + counts[best] - target) < abs(taken - target):
            held.add(best)
    return held


class LabelMap:
    """Class labels of a labelled pairs dataset: integers kept as they are, strings mapped to sorted ids."""

    def __init__(self, values: list[Any], names: list[str] | None = None) -> None:
        if names is not None:
            self.names = list(names)
            self.ids = None
        elif all(isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit()) for v in values):
            ints = sorted({int(v) for v in values})
            if ints and ints[0] < 0:
                raise DataError(f"integer labels must be >= 0, found {ints[0]}")
            self.names = [str(i) for i in range(ints[-1] + 1 if ints else 0)]
            self.ids = None
        else:
            self.names = sorted({str(v) for v in values})
            self.ids = {name: i for i, name in enumerate(self.names)}

    def __call__(self, value: Any) -> int:
        return int(value) if self.ids is None else self.ids[str(value)]
