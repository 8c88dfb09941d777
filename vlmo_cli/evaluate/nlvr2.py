"""The runner behind ``vlmo eval nlvr2``: predict each example of a prepared split (two fusion passes) and report
accuracy and consistency (:mod:`.nlvr2_metrics`), with the predictions as a CSV file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..factory import InferenceModel
from .report import check_report_outputs, sibling_path, write_report
from .target import (EvalTarget, check_examples, check_split, default_report_path, examples_suffix, load_for,
                     report_header, text_length)


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
    from ..model.family import nlvr2_logits

    prepared = open_prepared(target.dataset, "nlvr2")
    tok = resolve_tokenizer(model.tokenizer, prepared)
    if tok is None:
        raise DataError(f"{target.dataset}: no tokenizer with the model nor in the prepared directory")
    dataset = build_dataset(target.dataset, target.split, "nlvr2", image_size=model.image_size, train=False)
    identifiers = list(prepared.split(target.split)["identifier"])
    collate = _CollateWithIdentifiers(Collator("nlvr2", tok, CollateConfig(max_text_len=text_length(model, target))))
    loader = DataLoader(_WithIdentifiers(dataset, identifiers), batch_size=target.batch_size, shuffle=False,
                        collate_fn=collate)
    net, device = model.model, model.device
    predictions: dict[str, bool] = {}
    with torch.no_grad():
        for batch in loader:
            if not batch["identifiers"]:
                continue
            batch = trim_text_padding(batch)
            logits = nlvr2_logits(net, batch["input_ids"].to(device), batch["attention_mask"].to(device),
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

    check_examples(examples)
    prepared = open_prepared(target.dataset, "nlvr2")
    check_split(prepared, target.split)
    loaded = load_for(model, target, device, tokenizer)
    loaded.require_head("nlvr2", "fine-tune it with `vlmo finetune nlvr2`")
    report_path = Path(out) if out else default_report_path(loaded.path, "nlvr2")
    check_report_outputs(report_path, ["-predictions.csv"] + examples_suffix(examples), overwrite=overwrite,
                         inputs=[target.dataset, loaded.path])
    t0 = time.perf_counter()
    predictions = predict_nlvr2(loaded, target)
    seconds = time.perf_counter() - t0
    rows = prepared.split(target.split).select_columns(["identifier", "label"]).to_dict()
    labels = {str(i): bool(l) for i, l in zip(rows["identifier"], rows["label"])}
    csv_path = write_nlvr2_predictions(predictions.items(), sibling_path(report_path, "-predictions.csv"))
    report = report_header("nlvr2", loaded, target)
    report.update(metrics=nlvr2_metrics(predictions, labels), predictions=str(csv_path),
                  timings_s={"predict": seconds})
    if examples:
        from .examples_nlvr2 import save_nlvr2_split_examples

        report["examples"] = str(save_nlvr2_split_examples(prepared, target.split, predictions, examples,
                                                           sibling_path(report_path, "-examples.png")))
    write_report(report, report_path)
    return report, report_path
