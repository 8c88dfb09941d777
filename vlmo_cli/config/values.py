"""Typing of recipe values: coercion of TOML and command-line values to a key's declared type, with bounds and
choices checked, and the wording of what was expected (used by :mod:`vlmo_cli.config.recipe`)."""

from __future__ import annotations

import difflib
import tomllib
import types
import typing
from typing import Any, Iterable, Literal

from .fields import FieldSpec, is_finite_number
from .toml import toml_scalar

INVALID = object()  # placeholder for a value that failed validation (never left in a returned Recipe)


def format_value(value: Any) -> str:
    """A value as it would be written in TOML (so the message shows what the user wrote)."""
    if value is None:
        return '"none"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{...}"
    return toml_scalar(value)


def suggest(word: str, allowed: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(allowed), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class TypeMismatch(Exception):
    pass


def describe_type(tp: Any) -> str:
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
        return "one of " + ", ".join(format_value(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"{describe_type(args[0])} or a list of them"
        return f"a list of {len(args)} items ({', '.join(describe_type(a) for a in args)})"
    return str(tp)


def coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to ``tp``, or :class:`TypeMismatch`.

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
                return coerce(value, member)
            except TypeMismatch:
                continue
    elif origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            items = [value] if not isinstance(value, (list, tuple)) else list(value)
            return tuple(coerce(v, args[0]) for v in items)
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(coerce(v, a) for v, a in zip(value, args))
    raise TypeMismatch


def check_value(value: Any, spec: FieldSpec) -> tuple[Any, str | None]:
    """The typed value and ``None``, or ``INVALID`` and the message saying what is allowed."""
    try:
        typed = coerce(value, spec.type)
    except TypeMismatch:
        return INVALID, f"got {format_value(value)}; expected {describe_type(spec.type)}"
    if spec.choices is not None and typed not in spec.choices:
        allowed = ", ".join(format_value(c) for c in spec.choices)
        return INVALID, f"got {format_value(typed)}{suggest(str(typed), map(str, spec.choices))}; allowed: {allowed}"
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
            return INVALID, f"got {format_value(typed)}; must be {spec.bounds_text()}"
    if spec.check is not None:
        message = spec.check(typed)
        if message:
            return INVALID, f"got {format_value(typed)}; {message}"
    return typed, None


def parse_text(text: str, tp: Any) -> Any:
    """A command-line value read with the field's type in mind (TOML syntax first, then a bare string)."""
    stripped = text.strip()
    bools = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}
    try:
        value = tomllib.loads(f"v = {stripped}")["v"]
    except tomllib.TOMLDecodeError:
        value = bools.get(stripped.lower(), stripped) if accepts_type(tp, bool) else stripped
        if isinstance(value, str) and typing.get_origin(tp) is tuple and "," in value:
            value = [parse_text(part, typing.get_args(tp)[0]) for part in value.split(",")]
    if not isinstance(value, str) and accepts_type(tp, str) and not accepts_type(tp, type(value)):
        value = stripped  # e.g. run_name=2024 stays the string "2024"
    return value


def accepts_type(tp: Any, kind: type) -> bool:
    if tp is kind:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(accepts_type(a, kind) for a in typing.get_args(tp))
    if origin is Literal:
        return any(type(a) is kind for a in typing.get_args(tp))
    return False
