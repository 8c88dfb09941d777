"""Task runners behind ``vlmo eval retrieval|vqa|nlvr2``: resolve what to evaluate (recipe section, split names),
run the model, compute the metrics with the model-free code of this package and write a JSON report.

Every runner returns ``(report, path)``: the report is a plain dict (what the JSON file holds) and
:func:`render_report` turns it into a rich table. All of them accept a model path (model directory, run folder,
``checkpoints/step_N`` or official ``.pt``) or an already loaded :class:`~vlmo_cli.embed.InferenceModel`.

Where reports go by default: ``<run>/eval/<task>.json`` when the model lives in a run folder, else
``./eval/<task>.json``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..embed import InferenceModel, as_inference_model, run_folder_of
from ..errors import CheckpointError, DataError
from .report import check_report_outputs, sibling_path, write_report

if TYPE_CHECKING:
    from rich.console import RenderableType

#: ``--split`` names of ``vlmo eval retrieval`` that stand for the recipe's test sets
RETRIEVAL_PRESETS = {"coco-test": "finetune.retrieval_coco", "flickr-test": "finetune.retrieval_flickr"}


# ---------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class EvalTarget:
    """What to evaluate on and how (resolved from a recipe's ``[eval.TASK]`` section and ``--split``).

    Attributes:
        dataset: prepared dataset directory.
        split: split inside it (``a+b`` concatenates).
        label: the split as the user named it (``coco-test``, ``DIR:SPLIT``, ``val``) - reported as is.
        image_size: resolution to run at; ``None`` = the model's own (the recipe does not set one explicitly).
        batch_size: images/questions per forward pass.
        max_text_len: text length in tokens (capped at the model's).
        task: the recipe's task settings (``rerank_k``, ``chunk_size``, ``submission`` ...).
        recipe: the recipe the settings came from (a shipped name or a file, e.g. a run's ``recipe.toml``).
    """

    dataset: Path
    split: str
    label: str
    image_size: int | None
    batch_size: int
    max_text_len: int
    task: Any = None
    recipe: str | None = None


def _split_path(text: str) -> tuple[str, str] | None:
    """``DIR:SPLIT`` -> ``(DIR, SPLIT)``; ``None`` for a plain split name."""
    if ":" not in text:
        return None
    directory, _, split = text.rpartition(":")
    if not directory or not split:
        raise DataError(f"--split {text!r}: expected DIR:SPLIT (a prepared directory and one of its splits)")
    return directory, split


#: the evaluation a trained stage is scored with (its dataset and validation split are the eval defaults)
EVAL_OF_STAGE = {"finetune.vqa": "vqa", "finetune.nlvr2": "nlvr2", "finetune.retrieval_coco": "retrieval",
                 "finetune.retrieval_flickr": "retrieval", "finetune.classify": "classify", "pretrain.vl": "retrieval"}
#: the recipe whose ``[eval.*]`` sections apply when neither a recipe nor a run's own recipe is at hand
FALLBACK_RECIPE = "base"


def run_recipe_of(model: str | Path | None) -> Path | None:
    """``RUN/recipe.toml`` (the run's resolved recipe) when ``model`` lives in a run folder that has one."""
    run = run_folder_of(model) if isinstance(model, (str, Path)) else None
    path = run / "recipe.toml" if run is not None else None
    return path if path is not None and path.is_file() else None


def _eval_section_from_run(task: str, run_recipe) -> list[str]:
    """Overrides giving ``[eval.TASK]`` a dataset and split when the run's recipe has no such section: the trained
    stage's dataset and validation split when it trained for ``task``, else those of the fallback recipe."""
    from ..recipe import load_recipe

    section = f"eval.{task}"
    if section in run_recipe.stages:
        return []
    for name in run_recipe.stage_names():
        values = run_recipe.stages[name].task
        if EVAL_OF_STAGE.get(name) == task and values.get("dataset"):
            dataset = values["dataset"]
            dataset = dataset[0] if isinstance(dataset, (list, tuple)) else dataset
            return [f"{section}.dataset={dataset}", f"{section}.split={values.get('val_split', 'val')}"]
    fallback = load_recipe(FALLBACK_RECIPE).stages.get(section)
    if fallback is None:
        return []
    return [f"{section}.{key}={fallback.task[key]}" for key in ("dataset", "split") if key in fallback.task]


def eval_target(task: str, recipe: str | Path | None = FALLBACK_RECIPE, overrides: Iterable[str] = (),
                split: str | None = None, *, model: str | Path | None = None) -> EvalTarget:
    """Resolve ``[eval.TASK]`` of ``recipe`` (with ``overrides``) and a ``--split`` into an :class:`EvalTarget`.

    ``split`` may be ``None`` (the recipe's), a split name of the recipe's dataset, ``DIR:SPLIT``, or for retrieval
    ``coco-test`` / ``flickr-test``: the ``test`` split of the recipe's COCO resp. Flickr30k dataset (the dataset of
    ``[finetune.retrieval_coco|flickr]`` when the recipe configures it, else ``[eval.retrieval]``'s).

    ``recipe=None``: the recipe of ``model``'s run folder (``RUN/recipe.toml``: the run's image size, text length,
    batch size, model settings; dataset and split from its trained stage when that trained for ``task``), else
    ``base``.
    """
    from ..recipe import load_recipe

    section = f"eval.{task}"
    overrides = list(overrides)
    if recipe is None:
        recipe = run_recipe_of(model) or FALLBACK_RECIPE
        if recipe != FALLBACK_RECIPE:
            overrides = _eval_section_from_run(task, load_recipe(recipe)) + overrides
    explicit = _split_path(split) if split else None
    if explicit is not None:  # the section may have no dataset of its own (e.g. [eval.classify] in no recipe)
        overrides = [f"{section}.dataset={explicit[0]}", *overrides]
    recipe_obj = load_recipe(recipe, overrides)
    stage = recipe_obj.resolve(section)
    dataset, chosen = Path(stage.task.dataset), stage.task.split
    label = split or chosen
    if split:
        if explicit is not None:
            dataset, chosen = Path(explicit[0]), explicit[1]
        elif task == "retrieval" and split in RETRIEVAL_PRESETS:
            source = recipe_obj.stages.get(RETRIEVAL_PRESETS[split])
            if split == "flickr-test" and source is not None and source.task.get("dataset"):
                value = source.task["dataset"]
                dataset = Path(value[0] if isinstance(value, (list, tuple)) else value)
            chosen = "test"
        else:
            chosen = split
    own = recipe_obj.stages.get(section)
    explicit_size = (own is not None and "image_size" in own.data) or "image_size" in recipe_obj.data
    return EvalTarget(dataset=dataset, split=chosen, label=label,
                      image_size=stage.data.image_size if explicit_size else None,
                      batch_size=stage.data.batch_size, max_text_len=stage.data.max_text_len, task=stage.task,
                      recipe=str(recipe))


def check_split(prepared, split: str) -> None:
    """Raise a :class:`DataError` naming the available splits when ``split`` (or a part of ``a+b``) is missing."""
    missing = [part for part in split.split("+") if part and part not in prepared.splits]
    if missing or not split.strip("+"):
        raise DataError(f"{prepared.root}: no split {missing[0] if missing else split!r}; "
                        f"available: {', '.join(prepared.splits)}")


def default_report_path(model_path: str | Path | None, task: str) -> Path:
    """``<run>/eval/<task>.json`` for a model inside a run folder, else ``./eval/<task>.json``."""
    run = run_folder_of(model_path) if model_path is not None else None
    return (run if run is not None else Path.cwd()) / "eval" / f"{task}.json"


def _sibling(report_path: Path, suffix: str) -> Path:
    return sibling_path(report_path, suffix)


def _check_examples(examples: int) -> None:
    if examples < 0:
        raise DataError(f"--examples must be >= 0, got {examples}")


def _examples_suffix(examples: int) -> list[str]:
    """The side file ``--examples N`` adds to a report (none for 0)."""
    return ["-examples.png"] if examples else []


def _header(task: str, model: InferenceModel | None, target: EvalTarget | None) -> dict[str, Any]:
    from .. import __version__

    head: dict[str, Any] = {"task": task, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "vlmo_cli_version": __version__}
    if model is not None:
        head.update(model=str(model.path), device=str(model.device), image_size=model.image_size)
        if model.resized_from is not None:
            head["image_size_resized_from"] = model.resized_from
    if target is not None:
        head.update(split=target.label, dataset=str(target.dataset), dataset_split=target.split,
                    recipe=target.recipe)
    return head


def _load(model, target: EvalTarget, device, tokenizer) -> InferenceModel:
    return as_inference_model(model, image_size=target.image_size, device=device, tokenizer=tokenizer)


def _text_len(model: InferenceModel, target: EvalTarget) -> int:
    return min(target.max_text_len, model.model.config.max_text_len)


def _need_head(model: InferenceModel, head: str, how: str) -> None:
    if head not in model.model.config.heads:
        raise CheckpointError(f"{model.path}: the model has no {head!r} head (heads: "
                              f"{', '.join(model.model.config.heads)}); {how}")


# ---------------------------------------------------------------------------------------------------- retrieval
def run_retrieval(
    model: InferenceModel | str | Path,
    target: EvalTarget,
    *,
    rerank_k: int | None = None,
    chunk_size: int | None = None,
    examples: int = 0,
    examples_k: int = 5,
    out: str | Path | None = None,
    device: str | None = None,
    tokenizer=None,
    overwrite: bool = False,
) -> tuple[dict[str, Any], Path]:
    """Image-text retrieval recall of a dual encoder on ``target`` (and ITM re-ranked recall with ``rerank_k``).

    Args:
        rerank_k / chunk_size: default to the recipe's ``[eval.retrieval]`` values.
        examples: draw the top ``examples_k`` images of this many caption queries into ``<report>-examples.png``.
    """
    from ..data.store import open_prepared
    from ..search_index import require_itm
    from .retrieval import retrieval_recall
    from .retrieval_metrics import PROTOCOL, TIE_RULE, pool_warnings

    task = target.task
    rerank_k = int(getattr(task, "rerank_k", 0) if rerank_k is None else rerank_k)
    chunk_size = int(getattr(task, "chunk_size", 1024) if chunk_size is None else chunk_size)
    if rerank_k < 0 or examples < 0:
        raise DataError("--rerank-k and --examples must be >= 0")
    prepared = open_prepared(target.dataset, "pairs")
    check_split(prepared, target.split)
    loaded = _load(model, target, device, tokenizer)
    if rerank_k:
        require_itm(loaded.model, loaded.path)
    report_path = Path(out) if out else default_report_path(loaded.path, "retrieval")
    check_report_outputs(report_path, ["-examples.png"] if examples else [], overwrite=overwrite,
                         inputs=[target.dataset, loaded.path])
    result = retrieval_recall(
        loaded.model, target.dataset, target.split, tokenizer=loaded.tokenizer, image_size=loaded.image_size,
        max_text_len=_text_len(loaded, target), batch_size=target.batch_size, device=loaded.device,
        rerank_k=rerank_k, chunk_size=chunk_size, keep_top=examples_k if examples else 0,
    )
    first = result.result
    scorer = "dual encoder: cosine similarity of the ITC embeddings (image-only and text-only passes)"
    report = _header("retrieval", loaded, target)
    report.update(
        protocol=PROTOCOL, tie_rule=TIE_RULE, num_images=first.num_images, num_texts=first.num_texts,
        pool={"images": first.num_images, "texts": first.num_texts},
        warnings=pool_warnings(first.num_images, first.num_texts, first.ks),
        scorer=scorer, rerank_k=rerank_k, max_text_len=_text_len(loaded, target), batch_size=target.batch_size,
        chunk_size=chunk_size, metrics=first.metrics,
        metrics_reranked=result.reranked.metrics if result.reranked is not None else None,
        timings_s={"encode": result.timings.get("encode_s"), "rank": result.timings.get("rank_s"),
                   "rerank": result.timings.get("rerank_s")},
    )
    if rerank_k:
        report["rerank_scorer"] = (f"fusion encoder ITM head on each query's top {rerank_k}: "
                                   "ITM match logit + ITC similarity (VLMo/LAVIS re-ranking); later ranks unchanged")
    if examples:
        final = result.reranked or first
        report["examples"] = str(save_examples(prepared, target.split, final, examples, examples_k,
                                               _sibling(report_path, "-examples.png")))
    write_report(report, report_path)
    return report, report_path


def save_examples(prepared, split: str, result, num_queries: int, k: int, path: Path) -> Path:
    """A PNG grid of the top ``k`` images for ``num_queries`` caption queries spread evenly over the split, with each
    query's ground-truth image in a last column when the top ``k`` missed it."""
    from .examples_grid import save_retrieval_grid

    rows = prepared.split(split)
    captions = [c for caps in rows.select_columns(["captions"])["captions"] for c in caps]
    n = min(num_queries, len(captions))
    picks = sorted({round(i * (len(captions) - 1) / max(n - 1, 1)) for i in range(n)})
    k = min(k, result.t2i.k)
    images = rows.select_columns(["image"])
    truth = result.text_to_image
    results, scores, hits, truths = [], [], [], []
    for t in picks:
        found = result.t2i.indices[t, :k].tolist()
        results.append([images[int(j)]["image"]["bytes"] for j in found])
        scores.append(result.t2i.scores[t, :k].tolist())
        hits.append([j == int(truth[t]) for j in found])
        truths.append(None if any(hits[-1]) else images[int(truth[t])]["image"]["bytes"])
    return save_retrieval_grid([captions[t] for t in picks], results, scores, path, hits=hits,
                               query_labels=[f"caption {t}" for t in picks], truths=truths)


# ---------------------------------------------------------------------------------------------------- VQA
def vqa_files_report(results, questions, annotations, *, evaluator: str | None = None,
                     dedupe: str | None = None) -> dict[str, Any]:
    """Official VQA accuracy of a results list/file against official-format questions and annotations.

    ``evaluator``: ``official`` (default) or ``legacy``; ``dedupe``: ``None`` refuses conflicting duplicate ids,
    ``first`` / ``last`` keeps that answer.
    """
    from .vqa_metrics import DEFAULT_EVALUATOR, score_results

    return score_results(results, questions, annotations, evaluator=evaluator or DEFAULT_EVALUATOR, dedupe=dedupe)


def score_vqa_predictions(predictions: str | Path, questions: str | Path | None, annotations: str | Path,
                          *, out: str | Path | None = None, evaluator: str | None = None,
                          dedupe: str | None = None, overwrite: bool = False) -> tuple[dict[str, Any], Path]:
    """``vlmo eval vqa --predictions R --questions Q --annotations A``: score a results file without a model."""
    path = Path(out) if out else Path.cwd() / "eval" / "vqa.json"
    check_report_outputs(path, overwrite=overwrite, inputs=[predictions, questions, annotations])
    report = _header("vqa", None, None)
    report.update(predictions=str(predictions), questions=str(questions) if questions else None,
                  annotations=str(annotations))
    report["metrics"] = vqa_files_report(predictions, questions, annotations, evaluator=evaluator, dedupe=dedupe)
    write_report(report, path)
    return report, path


def _vqa_official(rows: Mapping[str, list]) -> tuple[list[dict], list[dict]]:
    """Official-format questions and annotations of the labelled rows of a prepared split."""
    questions, annotations = [], []
    for qid, image_id, question, answers, a_type, q_type in zip(
        rows["question_id"], rows["image_id"], rows["question"], rows["answers"], rows["answer_type"],
        rows["question_type"],
    ):
        if not answers:
            continue
        questions.append({"question_id": int(qid), "image_id": image_id, "question": question})
        annotations.append({"question_id": int(qid), "answer_type": a_type, "question_type": q_type,
                            "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]})
    return questions, annotations


def predict_vqa(model: InferenceModel, target: EvalTarget, answers: Sequence[str]) -> tuple[list[tuple[int, str]], float]:
    """Arg-max answers ``[(question_id, answer)]`` in split order, and VLMo's soft VQA score (0..1)."""
    import torch

    from ..data.collate import trim_text_padding
    from ..data.loader import build_dataloader
    from .vqa_metrics import SoftVQAScore

    loader = build_dataloader(target.dataset, target.split, "vqa", tokenizer=model.tokenizer,
                              image_size=model.image_size, batch_size=target.batch_size, train=False,
                              max_text_len=_text_len(model, target))
    net, device = model.model, model.device
    pairs: list[tuple[int, str]] = []
    soft = SoftVQAScore()
    with torch.no_grad():
        for batch in loader:
            if not batch["question_ids"].numel():
                continue
            batch = trim_text_padding(batch)
            pooled = net.forward_pair(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                      batch["pixel_values"].to(device)).pooled
            logits = net.vqa_logits(pooled).float().cpu()
            soft.update(logits, batch["vqa_targets"])
            pairs += [(int(q), answers[int(i)]) for q, i in zip(batch["question_ids"], logits.argmax(1))]
    return pairs, soft.compute()


def run_vqa(
    model: InferenceModel | str | Path,
    target: EvalTarget,
    *,
    out: str | Path | None = None,
    submission: bool | None = None,
    evaluator: str | None = None,
    examples: int = 0,
    device: str | None = None,
    tokenizer=None,
    overwrite: bool = False,
) -> tuple[dict[str, Any], Path]:
    """VQA on a prepared split: official accuracy when it has answers, else the submission file.

    Predictions are the arg-max over the dataset's answer vocabulary (``answers.json``). With answers, the report has
    overall / per answer type / per question type accuracy (the official evaluator), VLMo's soft score and the
    majority-answer baseline on the same questions; the results file is written too when ``submission`` (default:
    the recipe's ``submission``). Without answers, ``<report>-submission.json`` is written (one entry per question
    id, de-duplicated, coverage of the split checked). ``evaluator``: ``official`` / ``legacy`` (default: the
    recipe's ``evaluator``). ``examples``: draw this many questions into ``<report>-examples.png``.
    """
    from ..data.store import open_prepared
    from .vqa_metrics import write_submission

    from .vqa_metrics import check_evaluator

    if evaluator is not None:
        check_evaluator(evaluator)
    _check_examples(examples)
    prepared = open_prepared(target.dataset, "vqa")
    check_split(prepared, target.split)
    answers = prepared.answers
    loaded = _load(model, target, device, tokenizer)
    _need_head(loaded, "vqa", "fine-tune it with `vlmo finetune vqa`")
    if loaded.model.config.vqa_num_answers != len(answers):
        raise CheckpointError(f"{loaded.path}: the VQA head has {loaded.model.config.vqa_num_answers} answers but "
                              f"{target.dataset}/answers.json has {len(answers)}; evaluate on the answer vocabulary "
                              "the model was fine-tuned with")
    report_path = Path(out) if out else default_report_path(loaded.path, "vqa")
    check_report_outputs(report_path, ["-submission.json", "-results.json"] + _examples_suffix(examples),
                         overwrite=overwrite,
                         inputs=[target.dataset, loaded.path])
    t0 = time.perf_counter()
    pairs, soft_score = predict_vqa(loaded, target, answers)
    seconds = time.perf_counter() - t0
    rows = prepared.split(target.split).select_columns(
        ["question_id", "image_id", "question", "answers", "answer_type", "question_type"]).to_dict()
    split_ids = [int(q) for q in rows["question_id"]]
    questions, annotations = _vqa_official(rows)
    report = _header("vqa", loaded, target)
    report.update(num_questions=len(split_ids), num_answers_vocab=len(answers), predictor="arg-max over answers.json",
                  timings_s={"predict": seconds})
    want_file = bool(getattr(target.task, "submission", True) if submission is None else submission)
    evaluator = evaluator or getattr(target.task, "evaluator", None)
    if not annotations:
        summary = write_submission(pairs, _sibling(report_path, "-submission.json"), split_ids)
        report.update(labelled=False, submission=str(summary.path), submission_entries=summary.num_written,
                      duplicates_dropped=summary.num_duplicates)
    else:
        labelled = {q["question_id"] for q in questions}
        results = [{"question_id": q, "answer": a} for q, a in pairs if q in labelled]
        if want_file:
            summary = write_submission(pairs, _sibling(report_path, "-results.json"), split_ids)
            report["results_file"] = str(summary.path)
        # dedupe "first", as the results file written above
        metrics = vqa_files_report(results, questions, annotations, evaluator=evaluator, dedupe="first")
        majority = Counter(Counter(a["answer"] for a in ann["answers"]).most_common(1)[0][0]
                           for ann in annotations).most_common(1)[0][0]
        baseline = vqa_files_report([{"question_id": q["question_id"], "answer": majority} for q in questions],
                                    questions, annotations, evaluator=evaluator)
        report.update(labelled=True, metrics=metrics, vqa_score=round(100 * soft_score, 2),
                      majority_baseline={"answer": majority, "overall": baseline["overall"]},
                      num_unlabelled_questions=len(split_ids) - len(labelled))
    if examples:
        from .examples_vqa import save_vqa_split_examples
        from .vqa_metrics import DEFAULT_EVALUATOR

        report["examples"] = str(save_vqa_split_examples(prepared, target.split, pairs, examples,
                                                         _sibling(report_path, "-examples.png"),
                                                         evaluator=evaluator or DEFAULT_EVALUATOR))
    write_report(report, report_path)
    return report, report_path


# ---------------------------------------------------------------------------------------------------- NLVR2
class _WithIdentifiers:
    """An NLVR2 dataset whose items also carry their identifier (so unreadable examples cannot misalign them)."""

    def __init__(self, dataset, identifiers: list[str]) -> None:
        self.dataset, self.identifiers = dataset, identifiers

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if item is not None:
            item["identifier"] = self.identifiers[index]
        return item


class _CollateWithIdentifiers:
    def __init__(self, collator) -> None:
        self.collator = collator

    def __call__(self, items):
        batch = self.collator(items)
        batch["identifiers"] = [item["identifier"] for item in items if item is not None]
        return batch


def predict_nlvr2(model: InferenceModel, target: EvalTarget) -> dict[str, bool]:
    """``{identifier: predicted label}`` for the split (two fusion passes per example, arg-max of the head)."""
    import torch
    from torch.utils.data import DataLoader

    from ..data.collate import CollateConfig, Collator, trim_text_padding
    from ..data.loader import build_dataset, resolve_tokenizer
    from ..data.store import open_prepared

    prepared = open_prepared(target.dataset, "nlvr2")
    tok = resolve_tokenizer(model.tokenizer, prepared)
    if tok is None:
        raise DataError(f"{target.dataset}: no tokenizer with the model nor in the prepared directory")
    dataset = build_dataset(target.dataset, target.split, "nlvr2", image_size=model.image_size, train=False)
    identifiers = list(prepared.split(target.split)["identifier"])
    collate = _CollateWithIdentifiers(Collator("nlvr2", tok, CollateConfig(max_text_len=_text_len(model, target))))
    loader = DataLoader(_WithIdentifiers(dataset, identifiers), batch_size=target.batch_size, shuffle=False,
                        collate_fn=collate)
    net, device = model.model, model.device
    predictions: dict[str, bool] = {}
    with torch.no_grad():
        for batch in loader:
            if not batch["identifiers"]:
                continue
            batch = trim_text_padding(batch)
            logits = net.nlvr2_logits(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                      batch["pixel_values"].to(device), batch["pixel_values_1"].to(device))
            for identifier, label in zip(batch["identifiers"], logits.argmax(1).tolist()):
                predictions[identifier] = bool(label)
    return predictions


def run_nlvr2(
    model: InferenceModel | str | Path,
    target: EvalTarget,
    *,
    out: str | Path | None = None,
    examples: int = 0,
    device: str | None = None,
    tokenizer=None,
    overwrite: bool = False,
) -> tuple[dict[str, Any], Path]:
    """NLVR2 accuracy and consistency on a prepared split; predictions go to ``<report>-predictions.csv``, and
    ``examples`` pairs (both images, statement, prediction vs label) to ``<report>-examples.png``."""
    from ..data.store import open_prepared
    from .nlvr2_metrics import nlvr2_metrics, write_nlvr2_predictions

    _check_examples(examples)
    prepared = open_prepared(target.dataset, "nlvr2")
    check_split(prepared, target.split)
    loaded = _load(model, target, device, tokenizer)
    _need_head(loaded, "nlvr2", "fine-tune it with `vlmo finetune nlvr2`")
    report_path = Path(out) if out else default_report_path(loaded.path, "nlvr2")
    check_report_outputs(report_path, ["-predictions.csv"] + _examples_suffix(examples), overwrite=overwrite,
                         inputs=[target.dataset, loaded.path])
    t0 = time.perf_counter()
    predictions = predict_nlvr2(loaded, target)
    seconds = time.perf_counter() - t0
    rows = prepared.split(target.split).select_columns(["identifier", "label"]).to_dict()
    labels = {str(i): bool(l) for i, l in zip(rows["identifier"], rows["label"])}
    csv_path = write_nlvr2_predictions(predictions.items(), _sibling(report_path, "-predictions.csv"))
    report = _header("nlvr2", loaded, target)
    report.update(metrics=nlvr2_metrics(predictions, labels), predictions=str(csv_path),
                  timings_s={"predict": seconds})
    if examples:
        from .examples_nlvr2 import save_nlvr2_split_examples

        report["examples"] = str(save_nlvr2_split_examples(prepared, target.split, predictions, examples,
                                                           _sibling(report_path, "-examples.png")))
    write_report(report, report_path)
    return report, report_path


# ---------------------------------------------------------------------------------------------------- classify
def predict_classify(model: InferenceModel, target: EvalTarget) -> tuple[list[int], list[int]]:
    """Arg-max class per labelled (image, caption) of the split, and the true classes, in split order."""
    import torch

    from ..data.collate import trim_text_padding
    from ..data.loader import build_dataloader

    loader = build_dataloader(target.dataset, target.split, "classify", tokenizer=model.tokenizer,
                              image_size=model.image_size, batch_size=target.batch_size, train=False,
                              max_text_len=_text_len(model, target))
    net, device = model.model, model.device
    predictions: list[int] = []
    labels: list[int] = []
    with torch.no_grad():
        for batch in loader:
            if not batch["labels"].numel():
                continue
            batch = trim_text_padding(batch)
            pooled = net.forward_pair(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                      batch["pixel_values"].to(device)).pooled
            predictions += net.classify_logits(pooled).argmax(1).tolist()
            labels += batch["labels"].tolist()
    return predictions, labels


def run_classify(
    model: InferenceModel | str | Path,
    target: EvalTarget,
    *,
    out: str | Path | None = None,
    device: str | None = None,
    tokenizer=None,
    overwrite: bool = False,
) -> tuple[dict[str, Any], Path]:
    """Accuracy, per-class precision/recall and the confusion matrix of a ``finetune classify`` model on a labelled
    ``pairs`` split (one example per image-caption pair, classes named by the prepared dataset)."""
    from ..data.store import open_prepared
    from .classify_metrics import classification_metrics

    prepared = open_prepared(target.dataset, "pairs")
    check_split(prepared, target.split)
    class_names = prepared.label_names
    if not class_names:
        raise DataError(f"{target.dataset}: no class labels (prepare the pairs with --label-col)")
    loaded = _load(model, target, device, tokenizer)
    _need_head(loaded, "classify", "fine-tune it with `vlmo finetune classify`")
    if loaded.model.config.num_classes != len(class_names):
        raise CheckpointError(f"{loaded.path}: the classify head has {loaded.model.config.num_classes} classes but "
                              f"{target.dataset} has {len(class_names)} ({', '.join(class_names)}); evaluate on data "
                              "with the classes the model was fine-tuned with")
    report_path = Path(out) if out else default_report_path(loaded.path, "classify")
    check_report_outputs(report_path, overwrite=overwrite, inputs=[target.dataset, loaded.path])
    t0 = time.perf_counter()
    predictions, labels = predict_classify(loaded, target)
    seconds = time.perf_counter() - t0
    report = _header("classify", loaded, target)
    report.update(metrics=classification_metrics(predictions, labels, class_names),
                  predictor="arg-max of the classify head on the fused (image, caption) pair",
                  timings_s={"predict": seconds})
    write_report(report, report_path)
    return report, report_path


# ---------------------------------------------------------------------------------------------------- display
def _fmt(value: Any) -> str:
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
    title = Text(f"classify {report.get('split', '')}: accuracy {_fmt(metrics.get('accuracy'))} % of "
                 f"{metrics.get('num_examples')} examples")
    scores = Table(title=title, header_style="bold")
    for column in ("class", "precision", "recall", "support"):
        scores.add_column(column, justify="left" if column == "class" else "right")
    for name in names:
        row = metrics["per_class"][name]
        scores.add_row(Text(name), _fmt(row["precision"]), _fmt(row["recall"]), str(row["support"]))
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

    from .report import metrics_table

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
            table.add_row(key, _fmt(value), *([_fmt(reranked.get(key))] if reranked else []))
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
