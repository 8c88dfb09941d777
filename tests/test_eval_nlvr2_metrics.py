"""NLVR2 accuracy and consistency on hand-built predictions, official file formats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmo_cli.errors import DataError
from vlmo_cli.evaluate.nlvr2_metrics import (
    load_nlvr2_labels,
    load_nlvr2_predictions,
    nlvr2_metrics,
    parse_label,
    sentence_key,
    write_nlvr2_predictions,
)

# Sentence dev-1-*-0 appears on 3 image pairs, dev-1-*-1 on 2, dev-2-*-0 on 1.
LABELS = {
    "dev-1-0-0": "True",
    "dev-1-1-0": "False",
    "dev-1-2-0": "True",
    "dev-1-0-1": "False",
    "dev-1-3-1": "True",
    "dev-2-0-0": "False",
}


def test_accuracy_and_consistency():
    predictions = {
        "dev-1-0-0": True,
        "dev-1-1-0": False,
        "dev-1-2-0": False,  # wrong: sentence dev-1-?-0 is inconsistent
        "dev-1-0-1": False,
        "dev-1-3-1": True,  # sentence dev-1-?-1 fully correct
        "dev-2-0-0": False,  # sentence dev-2-?-0 fully correct
        "test1-9-0-0": True,  # another split: ignored, counted
    }
    metrics = nlvr2_metrics(predictions, LABELS)
    assert metrics["accuracy"] == pytest.approx(100 * 5 / 6)
    assert metrics["consistency"] == pytest.approx(100 * 2 / 3)
    assert (metrics["num_examples"], metrics["num_sentences"]) == (6, 3)
    assert (metrics["num_correct"], metrics["num_consistent"], metrics["num_ignored_predictions"]) == (5, 2, 1)


def test_all_wrong_and_all_right():
    flipped = {key: value != "True" for key, value in LABELS.items()}
    assert nlvr2_metrics(flipped, LABELS)["accuracy"] == 0.0
    assert nlvr2_metrics(flipped, LABELS)["consistency"] == 0.0
    right = {key: value.lower() for key, value in LABELS.items()}  # strings compare case-insensitively
    assert nlvr2_metrics(right, LABELS)["accuracy"] == 100.0
    assert nlvr2_metrics(right, LABELS)["consistency"] == 100.0


def test_sentence_key_blanks_the_pair_id():
    assert sentence_key("dev-850-3-1") == "dev-850--1"
    assert sentence_key("dev-850-0-1") == sentence_key("dev-850-3-1") != sentence_key("dev-850-3-0")
    with pytest.raises(DataError, match="split-setid-pairid-sentenceid"):
        sentence_key("dev-850-0")


def test_errors_missing_predictions_and_bad_labels():
    with pytest.raises(DataError, match="missing predictions for 1 of 6 examples"):
        nlvr2_metrics({key: True for key in list(LABELS)[:5]}, LABELS)
    with pytest.raises(DataError, match="expected True/False"):
        nlvr2_metrics({key: "maybe" for key in LABELS}, LABELS)
    with pytest.raises(DataError):
        nlvr2_metrics({}, {})
    assert parse_label(np.bool_(True)) is True and parse_label(1) is True and parse_label(" FALSE ") is False


def test_official_files_round_trip(tmp_path):
    lines = [json.dumps({"identifier": key, "sentence": "s", "label": value}) for key, value in LABELS.items()]
    (tmp_path / "dev.json").write_text("\n".join(lines) + "\n")
    labels = load_nlvr2_labels(tmp_path / "dev.json")
    assert labels == {key: value == "True" for key, value in LABELS.items()}
    path = write_nlvr2_predictions(((key, value) for key, value in labels.items()), tmp_path / "out" / "pred.csv")
    assert path.read_text().splitlines()[0] == "dev-1-0-0,True"
    assert nlvr2_metrics(load_nlvr2_predictions(path), labels)["accuracy"] == 100.0
    (tmp_path / "bad.json").write_text('{"identifier": "dev-1-0-0"}\n')
    with pytest.raises(DataError, match="bad.json:1"):
        load_nlvr2_labels(tmp_path / "bad.json")
    with pytest.raises(DataError, match="not found"):
        load_nlvr2_predictions(tmp_path / "missing.csv")
