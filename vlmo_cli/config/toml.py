"""Writing recipes back as TOML (``tomllib`` only reads): ``tomli_w`` with ``None`` written as ``"none"``, the
spelling recipes read for "no value"."""

from __future__ import annotations

from typing import Any, Mapping

import tomli_w


def _none_as_text(value: Any) -> Any:
    if value is None:
        return "none"
    if isinstance(value, Mapping):
        return {key: _none_as_text(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_none_as_text(item) for item in value]
    return value


def dump_toml(data: Mapping[str, Any]) -> str:
    """Nested dicts of str/int/float/bool/None/lists as TOML (None is written as ``"none"``, as recipes read it)."""
    return tomli_w.dumps(_none_as_text(data))


def toml_scalar(value: Any) -> str:
    """One value as TOML writes it on the right of ``key =``, on one line (``None`` as ``"none"``)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_scalar(item) for item in value) + "]"
    text = tomli_w.dumps({"v": _none_as_text(value)})
    return text[len("v = ") :].rstrip("\n")
