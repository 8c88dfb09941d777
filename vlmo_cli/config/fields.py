"""The rules of one recipe key (:class:`FieldSpec`) and how a schema dataclass declares them (:func:`setting`,
read back by :func:`specs_of`); :mod:`vlmo_cli.config.schema` declares the keys, :mod:`vlmo_cli.config.values`
checks values against them."""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable


class _Required:
    """Marks a key without a default (``dataclasses.MISSING`` cannot be a dataclass default itself)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class FieldSpec:
    """What one recipe key accepts.

    Args:
        name: the key.
        type: a Python type: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, a union of those (``int | float``,
            ``float | None``), ``tuple[float, float]`` (fixed length) or ``tuple[str, ...]`` (a string or a list).
        default: the default, or :data:`REQUIRED`.
        help: one line for people (shown in errors and ``vlmo recipes show``).
        ge, gt, le, lt: numeric bounds (also applied to each item of a tuple).
        choices: allowed values when they are only known at run time (model sizes).
        check: extra rule; returns a message when the value is not allowed, else ``None``.
    """

    name: str
    type: Any
    default: Any = REQUIRED
    help: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def bounds_text(self) -> str:
        parts = []
        if self.ge is not None:
            parts.append(f">= {self.ge:g}")
        if self.gt is not None:
            parts.append(f"> {self.gt:g}")
        if self.le is not None:
            parts.append(f"<= {self.le:g}")
        if self.lt is not None:
            parts.append(f"< {self.lt:g}")
        return " and ".join(parts)


def setting(
    default: Any = MISSING,
    *,
    help: str,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """A dataclass field carrying the validation rules of a recipe key (no default = required)."""
    meta = dict(help=help, ge=ge, gt=gt, le=le, lt=lt, choices=choices, check=check)
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


@functools.cache
def specs_of(cls: type) -> dict[str, FieldSpec]:
    """The :class:`FieldSpec` of every field of a schema dataclass, in declaration order (cached: do not mutate)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        default = REQUIRED if f.default is MISSING else f.default
        out[f.name] = FieldSpec(name=f.name, type=hints[f.name], default=default, **meta)
    return out

def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
