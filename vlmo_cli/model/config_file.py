"""What every architecture config (VLMo, BEiT-3, VQ-KD) does the same way: validation on construction, copies with
changes, and its ``config.json`` (read, written, unknown keys refused). Each config names itself in :attr:`KIND`
and keeps its own :meth:`problems` and ``from_dict`` (which checks it applies, in which order)."""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from pathlib import Path
from typing import Any

from ..errors import ConfigError


class ConfigFile:
    """Mixin for a dataclass config with ``problems() -> list[str]`` and ``from_dict(data, source)``."""

    #: the config's name in messages ("model", "BEiT-3", "VQ-KD")
    KIND = "model"

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(f"invalid {self.KIND} config: " + "; ".join(problems))

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read_json(cls, path: str | Path) -> Any:
        """The parsed ``config.json`` at ``path``; an unreadable or malformed file is a :class:`ConfigError`."""
        try:
            return json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read {cls.KIND} config ({exc})") from exc

    @classmethod
    def load(cls, path: str | Path):
        return cls.from_dict(cls.read_json(path), source=str(path))

    @classmethod
    def check_keys(cls, data: Any, source: str) -> None:
        """Refuse anything but a JSON object whose keys are all fields of the config (naming ``source``)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object of {cls.KIND} config fields, got "
                              f"{type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown {cls.KIND} config keys {unknown}; allowed: {sorted(names)}")

    @classmethod
    def typed(cls, data: dict[str, Any], source: str) -> dict[str, Any]:
        """``data`` with every value checked against its field's JSON type (all wrong ones in one error naming
        ``source``) and integers in float fields made floats (JSON writes 4.0 as 4)."""
        kinds = _field_kinds(cls)
        problems = [f"field {name!r} must be {_KIND_WORDS[kinds[name]]}, got {value!r}"
                    for name, value in data.items() if not _has_kind(value, kinds[name])]
        if problems:
            raise ConfigError(f"{source}: " + "; ".join(problems))
        return {name: float(value) if kinds[name].startswith("float") and value is not None else value
                for name, value in data.items()}


_KIND_WORDS = {"int": "an integer", "float": "a number", "float|None": "a number or null", "bool": "true or false",
               "str": "a string", "list[str]": "a list of strings"}


@functools.cache
def _field_kinds(cls: type) -> dict[str, str]:
    """Field name → JSON kind (``int``, ``float``, ``float|None``, ``bool``, ``str`` or ``list[str]``)."""
    return {name: hint.__name__ if isinstance(hint, type) else str(hint).replace(" ", "")
            for name, hint in typing.get_type_hints(cls).items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _has_kind(value: Any, kind: str) -> bool:
    return {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": _is_number,
        "float|None": lambda v: v is None or _is_number(v),
        "bool": lambda v: isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    }[kind](value)
