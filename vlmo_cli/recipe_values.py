"""Typing of recipe values: coercion of TOML and command-line values to a key's declared type, with bounds and
choices checked, and the wording of what was expected (used by :mod:`vlmo_cli.recipe`)."""

from __future__ import annotations

import difflib
import tomllib
import types
import typing
from typing import Any, Iterable, Literal

from .recipe_schema import FieldSpec, is_finite_number
from .toml_writer import _toml_scalar

_INVALID = object()  # placeholder for a value that failed validation (never left in a returned Recipe)


def _fmt(value: Any) -> str:
    """A value as it would be written in TOML (so the message shows what the user wrote)."""
    if value is None:
        return '"none"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{...}"
    return _toml_scalar(value)


def _suggest(word: str, allowed: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(allowed), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class _TypeMismatch(Exception):
    pass


def _describe(tp: Any) -> str:
    """What a type accepts, in words."""
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is type(None):
        return '"none"'
    if origin is Literal:
        return "one of " + ", ".join(_fmt(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"{_describe(args[0])} or a list of them"
        return f"a list of {len(args)} items ({', '.join(_describe(a) for a in args)})"
    return str(tp)


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to ``tp``, or :class:`_TypeMismatch`.

    Ints are accepted for floats (TOML writes ``lr = 1`` naturally); bools are never numbers.
    """
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if is_finite_number(value):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
    elif origin is Literal:
        for choice in typing.get_args(tp):
            if type(value) is type(choice) and value == choice:
                return value
    elif origin in (typing.Union, types.UnionType):
        for member in typing.get_args(tp):
            try:
                return _coerce(value, member)
            except _TypeMismatch:
                continue
    elif origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            items = [value] if not isinstance(value, (list, tuple)) else list(value)
            return tuple(_coerce(v, args[0]) for v in items)
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(v, a) for v, a in zip(value, args))
    raise _TypeMismatch


def _check_value(value: Any, spec: FieldSpec) -> tuple[Any, str | None]:
    """The typed value and ``None``, or ``_INVALID`` and the message saying what is allowed."""
    try:
        typed = _coerce(value, spec.type)
    except _TypeMismatch:
        return _INVALID, f"got {_fmt(value)}; expected {_describe(spec.type)}"
    if spec.choices is not None and typed not in spec.choices:
        allowed = ", ".join(_fmt(c) for c in spec.choices)
        return _INVALID, f"got {_fmt(typed)}{_suggest(str(typed), map(str, spec.choices))}; allowed: {allowed}"
    numbers = typed if isinstance(typed, tuple) else (typed,)
    for number in numbers:
        if not is_finite_number(number):
            continue
        if (
            (spec.ge is not None and number < spec.ge)
            or (spec.gt is not None and number <= spec.gt)
            or (spec.le is not None and number > spec.le)
            or (spec.lt is not None and number >= spec.lt)
        ):
            return _INVALID, f"got {_fmt(typed)}; must be {spec.bounds_text()}"
    if spec.check is not None:
        message = spec.check(typed)
        if message:
            return _INVALID, f"got {_fmt(typed)}; {message}"
    return typed, None


def _parse_text(text: str, tp: Any) -> Any:
    """A command-line value read with the field's type in mind (TOML syntax first, then a bare string)."""
    stripped = text.strip()
    bools = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}
    try:
        value = tomllib.loads(f"v = {stripped}")["v"]
    except tomllib.TOMLDecodeError:
        value = bools.get(stripped.lower(), stripped) if _accepts(tp, bool) else stripped
        if isinstance(value, str) and typing.get_origin(tp) is tuple and "," in value:
            value = [_parse_text(part, typing.get_args(tp)[0]) for part in value.split(",")]
    if not isinstance(value, str) and _accepts(tp, str) and not _accepts(tp, type(value)):
        value = stripped  # e.g. run_name=2024 stays the string "2024"
    return value


def _accepts(tp: Any, kind: type) -> bool:
    if tp is kind:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, kind) for a in typing.get_args(tp))
    if origin is Literal:
        return any(type(a) is kind for a in typing.get_args(tp))
    return False
