"""``vlmo eval retrieval|vqa|nlvr2|classify --model MODEL [RECIPE] [overrides]``: thin wrappers over the task
runners of :mod:`vlmo_cli.evaluate` that print the report as a table (:func:`render_report`) and say where the JSON
went."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from ..errors import VlmoError
from .common import literal

if TYPE_CHECKING:
    from rich.console import RenderableType

console = Console()

eval_app = typer.Typer(name="eval", no_args_is_help=True,
                       help="Evaluate a model: retrieval recall, VQA accuracy, NLVR2 accuracy, classification.")

ModelOpt = typer.Option(..., "--model", help="model directory, run folder, checkpoints/step_N or official .pt")
RecipeArg = typer.Argument(None, help="recipe file or shipped name whose [eval.*] section to use (default: the "
                                       "run's own recipe.toml for a model in a run folder, else base)")
OverridesArg = typer.Argument(None, help="recipe overrides key.path=value of the shared sections or this task's "
                              "[eval.TASK] section, e.g. data.batch_size=128")
OutOpt = typer.Option(None, "--out", help="report JSON (default: <run>/eval/<task>.json, or ./eval/<task>.json)")
OverwriteOpt = typer.Option(False, "--overwrite", help="replace a previous report (and its side files) at the report "
                                                       "path; a file eval did not write is never replaced")
DeviceOpt = typer.Option(None, "--device", help="torch device (default: cuda when available, else cpu)")
ImageSizeOpt = typer.Option(None, "--image-size", help="run at this resolution (default: recipe, else the model's)")
TokenizerOpt = typer.Option(None, "--tokenizer", help="tokenizer file/folder (default: the model's, else the data's)")


def _recipe_and_overrides(recipe: str | None, overrides: list[str] | None) -> tuple[str | None, list[str]]:
    """``vlmo eval vqa --model M key=value`` (no recipe): the first positional is an override, no recipe given."""
    overrides = list(overrides or [])
    if recipe is not None and "=" in recipe:
        return None, [recipe, *overrides]
    return recipe, overrides


def _target(task: str, recipe: str | None, overrides: list[str] | None, split: str | None, image_size: int | None,
            model: str | None = None):
    from ..evaluate.target import eval_target

    name, extra = _recipe_and_overrides(recipe, overrides)
    target = eval_target(task, name, extra, split, model=model)
    if image_size:
        target = dataclasses.replace(target, image_size=image_size)
    return target


# ---------------------------------------------------------------------------------------------------- display
def _cell(value: Any) -> str:
    """A metric as a table cell: floats with 2 decimals, ``-`` for none."""
    return f"{value:.2f}" if isinstance(value, float) else "-" if value is None else str(value)


def _vqa_rows(report: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What the VQA table shows: accuracy, the evaluator version, baselines and counts (or the submission)."""
    if not (report.get("labelled", True) and metrics):
        return {"submission": report.get("submission"), "entries": report.get("submission_entries"),
                "duplicates dropped": report.get("duplicates_dropped")}
    shown: dict[str, Any] = {"overall": metrics.get("overall")}
    shown.update({f"answer type {k}": v for k, v in metrics.get("per_answer_type", {}).items()})
    if "vqa_score" in report:
        shown["VLMo soft score"] = report["vqa_score"]
    if report.get("majority_baseline"):
        base = report["majority_baseline"]
        shown[f"majority baseline ({base['answer']!r})"] = base["overall"]
    shown["questions"] = metrics.get("num_questions")
    if metrics.get("num_duplicate_results"):
        shown[f"duplicate ids dropped (dedupe {metrics.get('dedupe') or 'identical answers'})"] = (
            metrics["num_duplicate_results"])
    if metrics.get("evaluator"):
        shown["evaluator"] = f"{metrics['evaluator']} (GT-Vision-Lab/VQA {metrics.get('evaluator_commit')})"
    return shown


def _classify_tables(report: Mapping[str, Any], metrics: Mapping[str, Any]) -> RenderableType:
    """Accuracy and per-class precision / recall, then the confusion matrix (rows: true class)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    names = metrics.get("class_names", [])
    title = Text(f"classify {report.get('split', '')}: accuracy {_cell(metrics.get('accuracy'))} % of "
                 f"{metrics.get('num_examples')} examples")
    scores = Table(title=title, header_style="bold")
    for column in ("class", "precision", "recall", "support"):
        scores.add_column(column, justify="left" if column == "class" else "right")
    for name in names:
        row = metrics["per_class"][name]
        scores.add_row(Text(name), _cell(row["precision"]), _cell(row["recall"]), str(row["support"]))
    confusion = Table(title="confusion matrix (rows: true class, columns: predicted)", header_style="bold")
    confusion.add_column("true \\ predicted")
    for name in names:
        confusion.add_column(Text(name), justify="right")
    for name, row in zip(names, metrics.get("confusion_matrix", [])):
        confusion.add_row(Text(name), *(str(count) for count in row))
    return Group(scores, confusion)


def render_report(report: Mapping[str, Any]) -> RenderableType:
    """A rich table of a report written by one of the runners (user-supplied strings are shown literally)."""
    from rich.table import Table
    from rich.text import Text

    from ..evaluate.report import metrics_table

    task = report.get("task")
    if task == "retrieval":
        title = (f"retrieval on {report.get('split')}: pool of {report.get('num_images')} images, "
                 f"{report.get('num_texts')} texts")
        table = Table(title=Text(title), header_style="bold")
        table.add_column("metric", style="cyan")
        table.add_column("dual encoder", justify="right")
        reranked = report.get("metrics_reranked")
        if reranked:
            table.add_column(f"+ ITM re-rank (top {report.get('rerank_k')})", justify="right")
        for key, value in report["metrics"].items():
            table.add_row(key, _cell(value), *([_cell(reranked.get(key))] if reranked else []))
        timings = report.get("timings_s", {})
        table.caption = "  ".join(f"{k} {v:.2f}s" for k, v in timings.items() if v is not None)
        return table
    metrics = dict(report.get("metrics") or {})
    if task == "classify":
        return _classify_tables(report, metrics)
    if task == "vqa":
        return metrics_table(_vqa_rows(report, metrics), title=Text(f"VQA {report.get('split', '')}".strip()))
    metrics.pop("evaluator", None)
    return metrics_table(metrics, title=Text(f"{task} {report.get('split', '')}".strip()))


def _show(report: dict, path: Path) -> None:
    """The report's table, its warnings and where its files went (user-supplied strings printed literally)."""
    console.print(render_report(report))
    for warning in report.get("warnings") or ():
        console.print(literal(f"warning: {warning}", style="yellow"))
    for key in ("examples", "results_file", "submission") + (("predictions",) if report["task"] == "nlvr2" else ()):
        if isinstance(report.get(key), str):
            console.print(literal(f"{key.replace('_', ' ')}: {report[key]}"))
    console.print(literal(f"report: {path}"))


@eval_app.command("retrieval")
def retrieval(
    recipe: str = RecipeArg,
    overrides: list[str] = OverridesArg,
    model: str = ModelOpt,
    split: str = typer.Option(None, "--split", help="coco-test, flickr-test, a split of the recipe's dataset, or DIR:SPLIT"),
    rerank_k: int = typer.Option(None, "--rerank-k", help="re-score each query's top K with the ITM head (0 = off)"),
    examples: int = typer.Option(0, "--examples", help="save a PNG grid of the top images of N caption queries"),
    out: Path = OutOpt,
    device: str = DeviceOpt,
    image_size: int = ImageSizeOpt,
    tokenizer: Path = TokenizerOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Image-text retrieval recall (TR/IR R@1/5/10, COCO/Flickr protocol), optionally ITM re-ranked."""
    from ..evaluate.retrieval import run_retrieval

    target = _target("retrieval", recipe, overrides, split, image_size, model)
    report, path = run_retrieval(model, target, rerank_k=rerank_k, examples=examples, out=out, device=device,
                                 tokenizer=tokenizer, overwrite=overwrite)
    _show(report, path)


@eval_app.command("vqa")
def vqa(
    recipe: str = RecipeArg,
    overrides: list[str] = OverridesArg,
    model: str = typer.Option(None, "--model", help="model directory, run folder or checkpoint (not with --predictions)"),
    split: str = typer.Option(None, "--split", help="val, rest_val, test-dev, test (a split of the prepared VQA data)"),
    submission: bool = typer.Option(None, "--submission/--no-submission",
                                    help="also write the results file for a labelled split (default: recipe)"),
    predictions: Path = typer.Option(None, "--predictions", help="score this official-format results file instead"),
    questions: Path = typer.Option(None, "--questions", help="with --predictions: official questions JSON"),
    annotations: Path = typer.Option(None, "--annotations", help="with --predictions: official annotations JSON"),
    evaluator: str = typer.Option(None, "--evaluator",
                                  help="official (GT-Vision-Lab/VQA master, a013f00) or legacy (before it); "
                                       "default: the recipe's eval.vqa.evaluator, official"),
    dedupe: str = typer.Option(None, "--dedupe", help="with --predictions: keep the first or last answer of a "
                                                      "question id given several different ones (default: refuse)"),
    examples: int = typer.Option(0, "--examples", help="save a PNG of N questions: image, question, predicted and "
                                                       "gold answers with their VQA scores (with --model)"),
    out: Path = OutOpt,
    device: str = DeviceOpt,
    image_size: int = ImageSizeOpt,
    tokenizer: Path = TokenizerOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Official VQA accuracy (overall, per answer type, per question type), or the submission file for a split
    without answers; with --predictions, score any official-format results file without a model."""
    from ..evaluate.vqa import run_vqa, score_vqa_predictions

    if predictions is not None:
        if model:
            raise VlmoError("give either --model (predict and score) or --predictions (score a results file), not both")
        if examples:
            raise VlmoError("--examples needs --model: a results file has no images to draw")
        if annotations is None:
            raise VlmoError("--predictions needs --annotations (and usually --questions): the official JSON files")
        report, path = score_vqa_predictions(predictions, questions, annotations, out=out, evaluator=evaluator,
                                             dedupe=dedupe, overwrite=overwrite)
    else:
        if not model:
            raise VlmoError("give --model MODEL, or --predictions RESULTS.json --annotations A.json [--questions Q.json]")
        if dedupe is not None:
            raise VlmoError("--dedupe applies to --predictions files; a model's own predictions have one answer each")
        target = _target("vqa", recipe, overrides, split, image_size, model)
        report, path = run_vqa(model, target, out=out, submission=submission, evaluator=evaluator,
                               examples=examples, device=device, tokenizer=tokenizer, overwrite=overwrite)
    _show(report, path)


@eval_app.command("nlvr2")
def nlvr2(
    recipe: str = RecipeArg,
    overrides: list[str] = OverridesArg,
    model: str = ModelOpt,
    split: str = typer.Option(None, "--split", help="dev or test1 (a split of the prepared NLVR2 data)"),
    examples: int = typer.Option(0, "--examples", help="save a PNG of N examples: both images, the statement, "
                                                       "prediction vs label"),
    out: Path = OutOpt,
    device: str = DeviceOpt,
    image_size: int = ImageSizeOpt,
    tokenizer: Path = TokenizerOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """NLVR2 accuracy and consistency."""
    from ..evaluate.nlvr2 import run_nlvr2

    target = _target("nlvr2", recipe, overrides, split, image_size, model)
    report, path = run_nlvr2(model, target, out=out, examples=examples, device=device, tokenizer=tokenizer,
                             overwrite=overwrite)
    _show(report, path)


@eval_app.command("classify")
def classify(
    recipe: str = RecipeArg,
    overrides: list[str] = OverridesArg,
    model: str = ModelOpt,
    split: str = typer.Option(None, "--split", help="a split of the labelled pairs (default: the run's validation "
                                                    "split), or DIR:SPLIT"),
    out: Path = OutOpt,
    device: str = DeviceOpt,
    image_size: int = ImageSizeOpt,
    tokenizer: Path = TokenizerOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Accuracy, per-class precision/recall and confusion matrix of a model fine-tuned with `finetune classify`."""
    from ..evaluate.classify import run_classify

    target = _target("classify", recipe, overrides, split, image_size, model)
    report, path = run_classify(model, target, out=out, device=device, tokenizer=tokenizer, overwrite=overwrite)
    _show(report, path)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
