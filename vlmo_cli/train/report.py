"""A run folder as one self-contained HTML page: plots of what was logged, the recipe, the environment, checkpoints
and the run's evaluation reports.

The page embeds everything it shows (plots and example pictures as base64 PNG), so it can be mailed or attached to
an issue as one file. It reads only what a run folder holds: ``metrics.jsonl``, ``recipe.toml`` (and the recipes of
later resumes, ``recipe.resume-N.toml``), ``environment.json``, ``checkpoints/`` and ``eval/*.json`` with the pictures
those reports name.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..layout import (CHECKPOINTS_DIR, ENVIRONMENT_NAME, EVAL_DIR, LATEST_NAME, METRICS_NAME, RECIPE_NAME,
                      RUN_REPORT_NAME, TRAINER_STATE_NAME)
from ..outputs import FileKind, writing_file

REPORT_NAME = RUN_REPORT_NAME
GENERATOR = '<meta name="generator" content="vlmo report">'
ENVIRONMENT_FILE = ENVIRONMENT_NAME

# Fields of a metrics.jsonl row that are bookkeeping, not measurements.
_NOT_PLOTTED = {"step", "time", "epoch"}


@dataclass
class Panel:
    """One plot: a title and the metric names drawn in it, one line each."""

    title: str
    keys: list[str] = field(default_factory=list)


def group_metrics(keys: list[str]) -> list[Panel]:
    """Sort metric names into panels: training losses, training accuracies, learning rate, throughput, validation
    losses, validation metrics and whatever else was logged (e.g. the contrastive temperature).

    Every key lands in exactly one panel; empty panels are dropped; keys keep their first-logged order.
    """
    panels = {name: Panel(name) for name in (
        "training losses", "training accuracies", "learning rate", "throughput (samples/s)",
        "validation losses", "validation metrics", "other")}
    for key in keys:
        if key in _NOT_PLOTTED:
            continue
        val = key.startswith("val_")
        if key.endswith("loss"):
            panel = "validation losses" if val else "training losses"
        elif val:
            panel = "validation metrics"
        elif "acc" in key:
            panel = "training accuracies"
        elif key == "lr":
            panel = "learning rate"
        elif key.startswith("samples_per_s"):
            panel = "throughput (samples/s)"
        else:
            panel = "other"
        panels[panel].keys.append(key)
    return [p for p in panels.values() if p.keys]


def read_metric_rows(run_dir: Path) -> list[dict]:
    """The rows of ``metrics.jsonl``; a line that is not JSON (a run killed mid-write) is skipped."""
    path = run_dir / METRICS_NAME
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
    return rows


def metric_series(rows: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """``{metric: (steps, values)}`` over the rows, keeping only finite numbers, in first-logged key order."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key in _NOT_PLOTTED or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(row["step"])
            values.append(float(value))
    return series


def plot_panel(panel: Panel, series: dict[str, tuple[list[float], list[float]]]) -> bytes:
    """One PNG (matplotlib, no display needed) with a line per metric of the panel over steps."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.4), dpi=100)
    ax = fig.add_subplot()
    for key in panel.keys:
        steps, values = series[key]
        ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, markersize=3, label=key)
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    if panel.title == "learning rate":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min {secs} s" if hours else f"{minutes} min {secs} s"


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _plots_section(rows: list[dict]) -> str:
    series = metric_series(rows)
    if not series:
        return _section("curves", "<p>No metrics were logged (metrics.jsonl is missing or empty).</p>")
    panels = group_metrics(list(series))
    figures = "".join(f"<figure>{_img(plot_panel(p, series), p.title)}</figure>" for p in panels)
    return _section("curves", f'<div class="plots">{figures}</div>')


def _summary_section(run_dir: Path, rows: list[dict]) -> str:
    items: list[tuple[str, Any]] = [("run folder", str(run_dir.resolve()))]
    state = _latest_trainer_state(run_dir)
    if state:
        items += [("stage", state.get("stage", "?")),
                  ("step", f"{state.get('step', '?')} of {state.get('total_steps', '?')}"),
                  ("samples seen", state.get("samples_seen", "?"))]
    last: dict[str, Any] = {}
    if rows:
        items.append(("steps logged", f"{rows[0]['step']} to {rows[-1]['step']} ({len(rows)} rows)"))
        times = [r["time"] for r in rows if isinstance(r.get("time"), (int, float))]
        if times:
            items.append(("wall time to the last logged step", _duration(max(times))))
        for row in rows:
            last.update({k: v for k, v in row.items() if k not in _NOT_PLOTTED and isinstance(v, (int, float))})
    cells = "".join(f"<div><b>{html.escape(k)}</b> {html.escape(_fmt(v))}</div>" for k, v in last.items())
    final = f"<h3>last logged values</h3><div class='grid'>{cells}</div>" if cells else ""
    return _section("summary", _table(items) + final)


def _latest_trainer_state(run_dir: Path) -> dict:
    pointer = run_dir / CHECKPOINTS_DIR / LATEST_NAME
    if not pointer.is_file():
        return {}
    path = run_dir / CHECKPOINTS_DIR / pointer.read_text().strip() / TRAINER_STATE_NAME
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return state if isinstance(state, dict) else {}


def _environment_section(run_dir: Path) -> str:
    path = run_dir / ENVIRONMENT_FILE
    if not path.exists():
        return _section("environment", f"<p>Not recorded (no {ENVIRONMENT_FILE} in the run folder).</p>")
    try:
        env = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return _section("environment", f"<p>{html.escape(ENVIRONMENT_FILE)} is unreadable: {html.escape(str(exc))}</p>")
    return _section("environment", _table(list(env.items()) if isinstance(env, dict) else [("value", env)]))


def _recipe_section(run_dir: Path) -> str:
    files = sorted(run_dir.glob("recipe*.toml"), key=lambda p: (p.name != RECIPE_NAME, p.name))
    if not files:
        return _section("recipe", "<p>No recipe.toml in the run folder.</p>")
    blocks = "".join(
        f"<details{' open' if i == 0 else ''}><summary>{html.escape(p.name)}</summary>"
        f"<pre>{html.escape(p.read_text(encoding='utf-8', errors='replace'))}</pre></details>"
        for i, p in enumerate(files))
    return _section("recipe", blocks)


def _checkpoints_section(run_dir: Path) -> str:
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return _section("checkpoints", "<p>No checkpoints folder.</p>")
    latest = (root / LATEST_NAME).read_text().strip() if (root / LATEST_NAME).is_file() else ""
    rows = []
    for ckpt in sorted((p for p in root.glob("step_*") if p.is_dir()), key=lambda p: _step_of(p.name)):
        size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
        mark = " (latest)" if ckpt.name == latest else ""
        rows.append((ckpt.name + mark, f"{size / 2**20:.1f} MiB"))
    return _section("checkpoints", _table(rows) if rows else "<p>None written.</p>")


def _step_of(name: str) -> int:
    tail = name.rpartition("_")[2]
    return int(tail) if tail.isdigit() else -1


def _eval_section(run_dir: Path) -> str:
    reports = sorted((run_dir / EVAL_DIR).glob("*.json")) if (run_dir / EVAL_DIR).is_dir() else []
    blocks = []
    for path in reports:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(report, dict) or "task" not in report and "metrics" not in report:
            continue  # a predictions or submission file beside the reports, not a report
        scalars = [(k, v) for k, v in _flatten(report) if isinstance(v, (int, float, str)) and len(str(v)) < 200]
        pictures = "".join(f"<figure>{_img(p.read_bytes(), p.name)}<figcaption>{html.escape(p.name)}</figcaption>"
                           "</figure>" for p in _pictures_of(report, path))
        blocks.append(f"<h3>{html.escape(path.name)}</h3>{_table(scalars)}{pictures}")
    return _section("evaluation", "".join(blocks) if blocks else "<p>No evaluation reports (eval/*.json).</p>")


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(_flatten(value, name + "."))
        else:
            out.append((name, value))
    return out


def _pictures_of(report: dict, report_path: Path) -> list[Path]:
    """PNG files a report names (e.g. its ``examples`` grid), resolved against the report's folder."""
    found = []
    for _, value in _flatten(report):
        if isinstance(value, str) and value.lower().endswith(".png"):
            candidate = Path(value)
            if not candidate.is_absolute():
                candidate = report_path.parent / candidate.name
            if candidate.is_file():
                found.append(candidate)
    return found


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1320px;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:.2em .6em;text-align:left;
font-size:.9em}th{background:#f5f5f5;font-weight:600}pre{background:#f8f8f8;padding:.8em;overflow:auto;
font-size:.85em}.grid{display:grid;grid-template-columns:repeat(4,1fr);gap:.15em .8em;
font-size:.85em}.plots{display:flex;flex-wrap:wrap;gap:.5em}figure{margin:.3em}img{max-width:100%}
"""


def render_run_report(run_dir: str | Path) -> str:
    """The HTML page for ``run_dir`` (a folder written by a training run)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"{run}: not a folder (expected a run folder written by vlmo pretrain-*/finetune)")
    if not (run / METRICS_NAME).exists() and not (run / RECIPE_NAME).exists():
        raise DataError(f"{run}: not a run folder (it has neither metrics.jsonl nor recipe.toml)")
    rows = read_metric_rows(run)
    title = f"vlmo run report: {run.resolve().name}"
    parts = [_summary_section(run, rows), _plots_section(rows), _eval_section(run), _checkpoints_section(run),
             _environment_section(run), _recipe_section(run)]
    return (f"<!doctype html><html><head><meta charset='utf-8'>{GENERATOR}<title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>\n")


def _is_run_report(path: Path) -> bool:
    with path.open("rb") as stream:
        return GENERATOR.encode() in stream.read(512)


RUN_REPORT = FileKind("vlmo report", _is_run_report)


def write_run_report(run_dir: str | Path, out: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``RUN/report.html``) atomically; returns its path.

    ``RUN/report.html`` belongs to the run and is always brought up to date; another existing file is replaced only
    when it is a previous run report and ``overwrite`` is set (any other file is refused).
    """
    run = Path(run_dir)
    page = render_run_report(run)
    default = run / REPORT_NAME
    target = Path(out) if out else default
    own = target.resolve() == default.resolve()
    with writing_file(target, RUN_REPORT, overwrite=overwrite or own) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target
