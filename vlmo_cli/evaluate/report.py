"""Evaluation reports: an atomically written JSON file and a rich table, shared by every ``vlmo eval`` command.

Atomic because a report is what people (and scripts comparing runs) trust: a crash or Ctrl-C while writing must
leave either the previous file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text


def _to_json(value: Any) -> Any:
    """``json.dump`` fallback for the values reports carry: paths, numpy/torch scalars and small arrays, sets."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "tolist"):  # numpy arrays/scalars, torch tensors
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to a JSON report")


def write_json(data: Any, path: str | Path, *, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (temporary file in the same folder, fsync, rename).

    Parent folders are created. Returns the path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    separators = (",", ": ") if indent is not None else (",", ":")
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=indent, separators=separators, default=_to_json, ensure_ascii=False)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    return target


def write_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write an evaluation report (a JSON object, indented) atomically; see :func:`write_json`."""
    return write_json(dict(report), path, indent=2)


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metric dicts as one level with dotted keys: ``{"a": {"b": 1}} -> {"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def format_value(value: Any, digits: int = 2) -> str:
    """Floats with ``digits`` decimals, everything else as ``str``; lists shortened."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        shown = ", ".join(format_value(item, digits) for item in value[:8])
        return f"[{shown}{', ...' if len(value) > 8 else ''}]"
    return str(value)


def metrics_table(metrics: Mapping[str, Any], *, title: str | Text | None = None, digits: int = 2) -> Table:
    """A two-column rich table (metric, value) of a possibly nested metrics dict; names and values are shown
    literally (no rich markup or emoji codes: they may come from user data)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric", style="cyan", no_wrap=True)
    table.add_column("value", justify="right")
    for name, value in flatten_metrics(metrics).items():
        table.add_row(Text(name), Text(format_value(value, digits)))
    return table


def print_metrics(
    metrics: Mapping[str, Any], *, title: str | None = None, console: Console | None = None, digits: int = 2
) -> None:
    """Print :func:`metrics_table` to ``console`` (a new stdout console by default)."""
    from rich.console import Console

    (console or Console()).print(metrics_table(metrics, title=title, digits=digits))
