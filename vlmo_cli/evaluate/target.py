"""What ``vlmo eval`` evaluates on: the recipe's ``[eval.TASK]`` section (or the recipe a run trained with) and
``--split`` resolved into an :class:`EvalTarget`, the split checks, and the report's default path and header fields
shared by the task runners (:mod:`.retrieval`, :mod:`.vqa`, :mod:`.nlvr2`, :mod:`.classify`).

Where reports go by default: ``<run>/eval/<task>.json`` when the model lives in a run folder, else
``./eval/<task>.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config.schema import STAGES, retrieval_presets
from ..errors import DataError
from ..factory import InferenceModel, as_inference_model
from ..layout import EVAL_DIR, RECIPE_NAME, run_folder_of

#: ``--split`` names of ``vlmo eval retrieval`` that stand for the recipe's test sets
RETRIEVAL_PRESETS = retrieval_presets()


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


def split_path(text: str) -> tuple[str, str] | None:
    """``DIR:SPLIT`` -> ``(DIR, SPLIT)``; ``None`` for a plain split name."""
    if ":" not in text:
        return None
    directory, _, split = text.rpartition(":")
    if not directory or not split:
        raise DataError(f"--split {text!r}: expected DIR:SPLIT (a prepared directory and one of its splits)")
    return directory, split


#: the evaluation a trained stage is scored with (its dataset and validation split are the eval defaults)
EVAL_OF_STAGE = {spec.name: spec.scored_by for spec in STAGES.values() if spec.scored_by}
#: the recipe whose ``[eval.*]`` sections apply when neither a recipe nor a run's own recipe is at hand
FALLBACK_RECIPE = "base"


def run_recipe_of(model: str | Path | None) -> Path | None:
    """``RUN/recipe.toml`` (the run's resolved recipe) when ``model`` lives in a run folder that has one."""
    run = run_folder_of(model) if isinstance(model, (str, Path)) else None
    path = run / RECIPE_NAME if run is not None else None
    return path if path is not None and path.is_file() else None


def _eval_section_from_run(task: str, run_recipe) -> list[str]:
    """Overrides giving ``[eval.TASK]`` a dataset and split when the run's recipe has no such section: the trained
    stage's dataset and validation split when it trained for ``task``, else those of the fallback recipe."""
    from ..config.recipe import load_recipe

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
    from ..config.recipe import load_recipe

    section = f"eval.{task}"
    overrides = list(overrides)
    if recipe is None:
        recipe = run_recipe_of(model) or FALLBACK_RECIPE
        if recipe != FALLBACK_RECIPE:
            overrides = _eval_section_from_run(task, load_recipe(recipe)) + overrides
    explicit = split_path(split) if split else None
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
    return (run if run is not None else Path.cwd()) / EVAL_DIR / f"{task}.json"


def report_header(task: str, model: InferenceModel | None, target: EvalTarget | None) -> dict[str, Any]:
    """The fields every report starts with: task, time, version, and the model and split when there are ones."""
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


def load_for(model, target: EvalTarget, device, tokenizer) -> InferenceModel:
    """``model`` (a path or an :class:`InferenceModel`) ready to run at ``target``'s resolution."""
    return as_inference_model(model, image_size=target.image_size, device=device, tokenizer=tokenizer)


def text_length(model: InferenceModel, target: EvalTarget) -> int:
    """The text length to encode at: the target's, capped at the model's."""
    return min(target.max_text_len, model.model.config.max_text_len)


def pair_task_logits(model: InferenceModel, target: EvalTarget, task: str, rows_key: str):
    """``(batch, logits)`` for every non-empty batch of the target split, in split order: the ``task`` head (``vqa``,
    ``classify``) over each fused (image, text) pair, in the model's family
    (:func:`~vlmo_cli.model.family.pair_logits`), padding columns trimmed, without gradients. ``rows_key`` is a batch key that is empty when the batch holds no
    usable row."""
    import torch

    from ..data.collate import trim_text_padding
    from ..data.loader import build_dataloader
    from ..model.family import pair_logits

    loader = build_dataloader(target.dataset, target.split, task, tokenizer=model.tokenizer,
                              image_size=model.image_size, batch_size=target.batch_size, train=False,
                              max_text_len=text_length(model, target))
    net, device = model.model, model.device
    with torch.no_grad():
        for batch in loader:
            if not batch[rows_key].numel():
                continue
            batch = trim_text_padding(batch)
            yield batch, pair_logits(net, task, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                     batch["pixel_values"].to(device))


def check_examples(examples: int) -> None:
    """``--examples N`` must not be negative."""
    if examples < 0:
        raise DataError(f"--examples must be >= 0, got {examples}")


def examples_suffix(examples: int) -> list[str]:
    """The side file ``--examples N`` adds to a report (none for 0)."""
    return ["-examples.png"] if examples else []
