"""Evaluation reports: an atomically written JSON file and a rich table, shared by every ``vlmo eval`` command.

Atomic because a report is what people (and scripts comparing runs) trust: a crash or Ctrl-C while writing must
leave either the previous file or the new one, never half of one.

Report paths and their side files (``-examples.png``, ``-submission.json``, ``-results.json``,
``-predictions.csv``) follow :mod:`vlmo_cli.outputs`: :func:`check_report_outputs` refuses, before any work, a file
the eval commands did not write, and a previous result without ``overwrite`` (``--overwrite``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..outputs import FileKind, atomic_file, check_file

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
    """Write ``data`` as JSON to ``path`` atomically (:func:`~vlmo_cli.outputs.atomic_file`: temporary file in the same folder, fsync, rename).

    Parent folders are created; the file gets the umask's permissions. Returns the path written.
    """
    target = Path(path)
    separators = (",", ": ") if indent is not None else (",", ":")
    with atomic_file(target) as temp, open(temp, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=indent, separators=separators, default=_to_json, ensure_ascii=False)
        stream.write("\n")
    return target


def write_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write an evaluation report (a JSON object, indented) atomically; see :func:`write_json`."""
    return write_json(dict(report), path, indent=2)


def sibling_path(report_path: str | Path, suffix: str) -> Path:
    """A side file of a report: ``eval/retrieval.json`` + ``-examples.png`` -> ``eval/retrieval-examples.png``."""
    report_path = Path(report_path)
    return report_path.with_name(f"{report_path.stem}{suffix}")


def _json_of(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_report(path: Path) -> bool:
    data = _json_of(path)
    return isinstance(data, dict) and "task" in data and "vlmo_cli_version" in data


def _is_results_file(path: Path) -> bool:
    data = _json_of(path)
    return isinstance(data, list) and all(isinstance(e, dict) and set(e) == {"question_id", "answer"} for e in data)


def _is_predictions_csv(path: Path) -> bool:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    return all(line.rpartition(",")[2] in ("True", "False") for line in lines)


def _is_png(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(8) == b"\x89PNG\r\n\x1a\n"


REPORT = FileKind("vlmo eval", _is_report)
SIDE_FILES: dict[str, Callable[[Path], bool]] = {
    "-examples.png": _is_png, "-submission.json": _is_results_file, "-results.json": _is_results_file,
    "-predictions.csv": _is_predictions_csv,
}


def check_report_outputs(report_path: str | Path, suffixes: Iterable[str] = (), *, overwrite: bool = False,
                         inputs: Iterable[str | Path] = ()) -> None:
    """Refuse a report path (or one of its side files ``suffixes``) the eval commands may not replace."""
    inputs = [p for p in inputs if p is not None]
    check_file(report_path, REPORT, overwrite=overwrite, inputs=inputs)
    for suffix in suffixes:
        check_file(sibling_path(report_path, suffix), FileKind("vlmo eval", SIDE_FILES[suffix]), overwrite=overwrite,
                   inputs=inputs)


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
