"""Monitoring: a rich progress line, ``metrics.jsonl`` and TensorBoard (through accelerate's trackers)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..layout import METRICS_NAME, atomic_file


def format_metrics(metrics: dict, keys: tuple[str, ...] = ()) -> str:
    shown = keys or tuple(k for k in metrics if k not in ("step", "epoch", "time"))
    parts = []
    for k in shown:
        v = metrics.get(k)
        if v is None:
            continue
        if k == "lr":
            parts.append(f"lr {v:.2e}")
        elif isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
        else:
            parts.append(f"{k} {v}")
    return "  ".join(parts)


class Monitor:
    """Writes every logged dict to ``metrics.jsonl`` (one JSON object per line) and to the accelerate trackers,
    and shows a progress bar with the latest values on the main process."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, accelerator, enabled: bool = True,
                 console: Console | None = None) -> None:
        self.path = run_dir / METRICS_NAME
        self.accelerator = accelerator
        self.enabled = enabled
        self.console = console or Console()
        self.progress = Progress(
            TextColumn("[bold]step"),
            MofNCompleteColumn(),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            disable=not enabled,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, info="")
        self._t0 = time.perf_counter()

    def __enter__(self) -> "Monitor":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def advance(self, step: int, info: str = "") -> None:
        self.progress.update(self.task, completed=step, info=info)

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.perf_counter() - self._t0, 3), **metrics}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log(numeric, step=step)

    def print(self, message: str) -> None:
        if self.enabled:
            self.progress.console.print(message, highlight=False)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, step: int) -> int:
    """Drop the rows logged after ``step`` (those of steps a resumed run trains again); returns how many."""
    path = Path(run_dir) / METRICS_NAME
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) < len(lines):
        with atomic_file(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))
    return len(lines) - len(kept)
