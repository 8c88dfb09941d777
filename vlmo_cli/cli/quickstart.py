"""``vlmo quickstart [--family vlmo|beit3] [--out DIR]``: the whole lifecycle on the embedded demo data, in minutes on
a CPU: every step is a real ``vlmo`` command with the family's tiny recipe.

VLMo (``recipes/tiny.toml``): prepare demo → pretrain-vision → pretrain-text → pretrain-vl → finetune vqa / retrieval /
nlvr2 → eval retrieval / vqa / nlvr2 → export. BEiT-3 (``recipes/beit3_tiny.toml``): prepare demo → pretrain-mdm
(masked data modelling) → the same fine-tuning from it, evaluation and export. Then a table of wall times, final
losses and each metric against its chance baseline. Each command is printed before it runs so that any step can be
re-run alone from the same folder.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..errors import VlmoError
from .common import invoke


@dataclass(frozen=True)
class Lifecycle:
    """What the quickstart runs for one model family.

    Args:
        recipe: the shipped tiny recipe of the family.
        runs: the prefix of its run names (``runs/{runs}-finetune-vqa`` …).
        pretrain: ``(step name, command)`` of each pre-training stage, in order; each writes ``runs/{runs}-{command}``.
        finetune_from: options every fine-tuning step gets (where its weights start).
    """

    recipe: str
    runs: str
    pretrain: tuple[tuple[str, str], ...]
    finetune_from: tuple[str, ...] = ()


LIFECYCLES = {
    "vlmo": Lifecycle("tiny", "tiny", (("stage 1: pretrain-vision", "pretrain-vision"),
                                        ("stage 2: pretrain-text", "pretrain-text"),
                                        ("stage 3: pretrain-vl", "pretrain-vl"))),
    # the BEiT-3 recipe's fine-tunes start at random unless told: the quickstart starts them from its pre-training
    "beit3": Lifecycle("beit3_tiny", "beit3-tiny", (("masked data modelling: pretrain-mdm", "pretrain-mdm"),),
                       ("--from", "runs/beit3-tiny-pretrain-mdm")),
}


Family = Enum("Family", {name: name for name in LIFECYCLES}, type=str)


@dataclass
class StepRecord:
    name: str
    command: list[str]
    seconds: float = 0.0
    final: dict[str, float] = field(default_factory=dict)


@dataclass
class QuickstartResult:
    out: Path
    family: str
    steps: list[StepRecord]
    metrics: dict[str, float]
    baselines: dict[str, float]
    paths: dict[str, str]

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "family": self.family,
            "steps": [{"name": s.name, "command": "vlmo " + shlex.join(s.command), "seconds": round(s.seconds, 2),
                       "final": s.final} for s in self.steps],
            "metrics": self.metrics,
            "baselines": self.baselines,
            "paths": self.paths,
        }


def _final_losses(run_dir: Path) -> dict[str, float]:
    from ..train.monitor import read_metrics

    last: dict[str, float] = {}
    for record in read_metrics(run_dir):
        for k, v in record.items():
            if k.endswith(("loss", "_acc", "_score")) or k.startswith("val_"):
                last[k] = v
    return {k: round(float(v), 4) for k, v in last.items()}


def run_quickstart(app: typer.Typer, out: str | Path = "vlmo-quickstart", recipe: str | None = None,
                   console: Console | None = None, overrides: list[str] | None = None,
                   family: str = "vlmo") -> QuickstartResult:
    """Run the lifecycle of ``family`` (:data:`LIFECYCLES`) in ``out`` (created; re-running continues nothing and
    starts afresh), each step a command of ``app`` (the app the ``quickstart`` command is registered on)."""
    console = console or Console()
    life = LIFECYCLES[family]
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    recipe = recipe or life.recipe  # a shipped recipe, found by name from any folder
    runs = f"runs/{life.runs}"
    extra = list(overrides or [])
    steps: list[StepRecord] = []
    cwd = os.getcwd()
    os.chdir(out)  # the tiny recipe's paths (demo_data/, runs/) are relative to the working folder
    try:
        def run(name: str, args: list[str], run_dir: str | None = None) -> StepRecord:
            console.rule(f"[bold]{name}")
            console.print(f"[cyan]$ cd {out} && vlmo {shlex.join(args)}[/]", highlight=False)
            t0 = time.perf_counter()
            try:
                invoke(app, args)
            except SystemExit as exc:
                if exc.code not in (0, None):
                    raise VlmoError(f"quickstart step '{name}' failed (exit {exc.code}): vlmo {shlex.join(args)}")
            record = StepRecord(name, args, time.perf_counter() - t0)
            if run_dir:
                record.final = _final_losses(Path(run_dir))
            steps.append(record)
            return record

        run("prepare demo data", ["prepare", "demo", "--out", "demo_data", "--overwrite"])
        train_common = [recipe, *extra, "--overwrite"]
        for name, command in life.pretrain:
            run(name, [command, *train_common], f"{runs}-{command}")
        tuned = [*train_common, *life.finetune_from]
        run("finetune vqa", ["finetune", "vqa", *tuned], f"{runs}-finetune-vqa")
        run("finetune retrieval", ["finetune", "retrieval", *tuned, "--dataset", "coco"],
            f"{runs}-finetune-retrieval_coco")
        run("finetune nlvr2", ["finetune", "nlvr2", *tuned], f"{runs}-finetune-nlvr2")
        reports = {
            "retrieval": f"{runs}-finetune-retrieval_coco/eval/retrieval.json",
            "vqa": f"{runs}-finetune-vqa/eval/vqa.json",
            "nlvr2": f"{runs}-finetune-nlvr2/eval/nlvr2.json",
        }
        run("eval retrieval", ["eval", "retrieval", "--model", f"{runs}-finetune-retrieval_coco", recipe, *extra,
                               "--split", "coco-test", "--examples", "4", "--out", reports["retrieval"],
                               "--overwrite"])
        run("eval vqa", ["eval", "vqa", "--model", f"{runs}-finetune-vqa", recipe, *extra, "--examples", "4",
                         "--out", reports["vqa"], "--overwrite"])
        run("eval nlvr2", ["eval", "nlvr2", "--model", f"{runs}-finetune-nlvr2", recipe, *extra, "--examples", "4",
                           "--out", reports["nlvr2"], "--overwrite"])
        exported = f"exported/{life.runs}-retrieval"
        run("export", ["export", f"{runs}-finetune-retrieval_coco", exported, "--format", "safetensors",
                       "--overwrite"])
        for evaluated in sorted({str(Path(v).parent.parent) for v in reports.values()}):
            # every run wrote its report.html when it ended; these again, now with their evaluations embedded
            run(f"report {Path(evaluated).name}", ["report", evaluated])

        retrieval = json.loads(Path(reports["retrieval"]).read_text())
        vqa = json.loads(Path(reports["vqa"]).read_text())
        nlvr2 = json.loads(Path(reports["nlvr2"]).read_text())
        r = retrieval["metrics"]
        n_img, n_txt = retrieval["num_images"], retrieval["num_texts"]
        metrics = {f"retrieval {k}": r[k] for k in ("tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10")}
        metrics["vqa accuracy"] = vqa["metrics"]["overall"]
        metrics["nlvr2 accuracy"] = nlvr2["metrics"]["accuracy"]
        caps = n_txt / n_img
        baselines = {}
        for k in (1, 5, 10):
            baselines[f"retrieval tr_r{k}"] = 100 * (1 - _comb_ratio(n_txt, caps, k))
            baselines[f"retrieval ir_r{k}"] = 100 * min(1.0, k / n_img)
        # the evaluator's baseline: the most common answer of the evaluated split itself (stricter than the train prior)
        baselines["vqa accuracy"] = vqa["majority_baseline"]["overall"]
        baselines["nlvr2 accuracy"] = 50.0
        paths = {"work folder": str(out), **{f"run {p.name}": str(out / p) for p in sorted(Path("runs").iterdir())},
                 **{f"report {k}": str(out / v) for k, v in reports.items()},
                 **{f"html {p.name}": str(out / p / "report.html") for p in sorted(Path("runs").iterdir())
                    if (p / "report.html").is_file()},
                 "exported model": str(out / exported)}
        result = QuickstartResult(out, family, steps, metrics, baselines, paths)
        (out / "quickstart.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    finally:
        os.chdir(cwd)
    print_summary(result, console)
    return result


def _comb_ratio(n_txt: float, caps: float, k: int) -> float:
    """Probability that none of an image's ``caps`` captions is among ``k`` random picks out of ``n_txt``."""
    p = 1.0
    for i in range(k):
        p *= max(0.0, (n_txt - caps - i) / (n_txt - i))
    return p


def print_summary(result: QuickstartResult, console: Console) -> None:
    steps = Table(title="quickstart: stages")
    steps.add_column("step")
    steps.add_column("wall time", justify="right")
    steps.add_column("final values")
    for s in result.steps:
        shown = {k: v for k, v in s.final.items() if not k.startswith("val_") or k in ("val_loss",)}
        steps.add_row(s.name, f"{s.seconds:.1f} s", "  ".join(f"{k} {v:.3g}" for k, v in list(shown.items())[:5]))
    console.print(steps)
    table = Table(title="quickstart: results against chance")
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("margin", justify="right")
    for k, v in result.metrics.items():
        base = result.baselines.get(k, float("nan"))
        table.add_row(k, f"{v:.1f}", f"{base:.1f}", f"{v - base:+.1f}")
    console.print(table)
    paths = Table(title="quickstart: where things are")
    paths.add_column("what")
    paths.add_column("path")
    for k, v in result.paths.items():
        paths.add_row(k, v)
    console.print(paths)


def register(app: typer.Typer) -> None:
    def quickstart(
        out: str = typer.Option("vlmo-quickstart", "--out", help="work folder (demo data, runs, reports, exports)"),
        family: Family = typer.Option("vlmo", "--family", help="model family: vlmo (three pre-training stages, "
                                   "recipes/tiny.toml) or beit3 (masked data modelling, recipes/beit3_tiny.toml)"),
        recipe: str = typer.Option("", "--recipe", help="recipe to use instead of the family's shipped tiny recipe"),
        overrides: list[str] = typer.Argument(None, help="recipe overrides for every step, e.g. train.seed=2"),
    ) -> None:
        """Prepare demo data, pre-train (VLMo: its three stages; BEiT-3: masked data modelling), fine-tune (VQA,
        retrieval, NLVR2), evaluate, export."""
        run_quickstart(app, out, recipe or None, overrides=overrides or [], family=family.value)

    app.command("quickstart")(quickstart)
