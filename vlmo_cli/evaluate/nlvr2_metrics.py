"""NLVR2 accuracy and consistency, as ``lil-lab/nlvr nlvr2/eval/metrics.py`` computes them.

- accuracy ("precision" in the script): share of examples whose predicted label equals the gold label;
- consistency: share of unique sentences for which *every* example is correct. A sentence is identified by the
  example identifier ``split-setid-pairid-sentenceid`` with the pair id blanked (``dev-850-0-0`` and
  ``dev-850-3-0`` are the same sentence on two image pairs), exactly as the script groups them.

Both are reported in percent (the script prints fractions). Labels in the data files are the strings
``"True"``/``"False"``; the script compares lowercased strings, here they are parsed to booleans.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vlmo_cli.errors import DataError
from vlmo_cli.outputs import atomic_file

EVALUATOR = "lil-lab/nlvr nlvr2/eval/metrics.py, re-implemented"


def parse_label(value: Any, where: str = "label") -> bool:
    """``True``/``False`` from a bool, ``0``/``1``, or a case-insensitive ``"true"``/``"false"`` string."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise DataError(f"{where}: expected True/False, got {value!r}")


def sentence_key(identifier: str) -> str:
    """The consistency group of an example: its identifier with the pair id (third field) blanked."""
    parts = identifier.split("-")
    if len(parts) != 4:
        raise DataError(
            f"NLVR2 identifier {identifier!r} is not 'split-setid-pairid-sentenceid' (e.g. 'dev-850-0-0')"
        )
    parts[2] = ""
    return "-".join(parts)


def nlvr2_metrics(predictions: Mapping[str, Any], labels: Mapping[str, Any]) -> dict[str, Any]:
    """Accuracy and consistency of ``predictions`` over every labelled example.

    Args:
        predictions: ``{identifier: predicted label}``; every labelled identifier needs one (extra identifiers,
            e.g. of another split, are ignored and counted, as the official script ignores them).
        labels: ``{identifier: gold label}`` for the split.

    Returns:
        ``accuracy`` and ``consistency`` in percent, ``num_examples``, ``num_sentences``, ``num_correct``,
        ``num_consistent``, ``num_ignored_predictions`` and the evaluator.
    """
    if not labels:
        raise DataError("NLVR2: no labelled examples to score")
    missing = [identifier for identifier in labels if identifier not in predictions]
    if missing:
        shown = ", ".join(missing[:5])
        raise DataError(f"NLVR2: missing predictions for {len(missing)} of {len(labels)} examples (e.g. {shown})")
    correct = 0
    consistent: dict[str, bool] = {}
    for identifier, gold in labels.items():
        key = sentence_key(identifier)
        predicted = parse_label(predictions[identifier], f"prediction {identifier}")
        ok = predicted == parse_label(gold, f"label {identifier}")
        correct += ok
        consistent[key] = consistent.get(key, True) and ok
    num_consistent = sum(consistent.values())
    return {
        "accuracy": 100.0 * correct / len(labels),
        "consistency": 100.0 * num_consistent / len(consistent),
        "num_examples": len(labels),
        "num_sentences": len(consistent),
        "num_correct": correct,
        "num_consistent": num_consistent,
        "num_ignored_predictions": sum(1 for identifier in predictions if identifier not in labels),
        "evaluator": EVALUATOR,
    }


def load_nlvr2_labels(path: str | Path) -> dict[str, bool]:
    """``{identifier: label}`` from an official NLVR2 JSON-lines file (``dev.json``, ``test1.json``)."""
    path = Path(path)
    labels: dict[str, bool] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not valid JSON ({error})") from None
        if not isinstance(example, Mapping) or "identifier" not in example or "label" not in example:
            raise DataError(f"{path}:{number}: an example needs 'identifier' and 'label'")
        labels[str(example["identifier"])] = parse_label(example["label"], f"{path}:{number} label")
    return labels


def load_nlvr2_predictions(path: str | Path) -> dict[str, bool]:
    """``{identifier: prediction}`` from the official predictions CSV (``identifier,prediction`` per line)."""
    path = Path(path)
    predictions: dict[str, bool] = {}
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                if not row or not row[0].strip():
                    continue
                if len(row) < 2:
                    raise DataError(f"{path}:{number}: expected 'identifier,prediction', got {row!r}")
                predictions[row[0].strip()] = parse_label(row[1], f"{path}:{number} prediction")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    return predictions


def write_nlvr2_predictions(predictions: Iterable[tuple[str, bool]], path: str | Path) -> Path:
    """Write the official predictions CSV: ``identifier,True|False`` per line, one line per identifier."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    seen: dict[str, bool] = {}
    for identifier, prediction in predictions:
        seen.setdefault(str(identifier), parse_label(prediction, f"prediction {identifier}"))
    with atomic_file(target) as temp:
        temp.write_text("".join(f"{identifier},{value}\n" for identifier, value in seen.items()), encoding="utf-8")
    return target
