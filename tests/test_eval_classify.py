"""``vlmo eval classify``: the metrics by hand on a small case, then end to end on a labelled set fine-tuned with
``vlmo finetune classify`` (the run folder alone says which data and settings to evaluate with)."""

from __future__ import annotations

import json

import pytest

from helpers import export_pairs, run
from test_eval_cli import make_model
from vlmo_cli.data.store import open_prepared
from vlmo_cli.errors import DataError
from vlmo_cli.evaluate.classify_metrics import classification_metrics


def test_classification_metrics_by_hand():
    # true:      a a a b b c
    # predicted: a a b b a a   -> confusion rows (true) a: [2, 1, 0], b: [1, 1, 0], c: [1, 0, 0]
    metrics = classification_metrics([0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 2], ["a", "b", "c"])
    assert metrics["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    assert metrics["accuracy"] == pytest.approx(100 * 3 / 6) and metrics["num_correct"] == 3
    assert metrics["per_class"]["a"] == {"precision": pytest.approx(50.0), "recall": pytest.approx(200 / 3),
                                         "support": 3}  # 2 of 4 predicted "a" are right; 2 of 3 "a" found
    assert metrics["per_class"]["b"] == {"precision": 50.0, "recall": 50.0, "support": 2}
    assert metrics["per_class"]["c"] == {"precision": None, "recall": 0.0, "support": 1}  # never predicted
    assert metrics["macro_precision"] == pytest.approx(50.0)  # over the classes where it is defined
    assert metrics["macro_recall"] == pytest.approx((200 / 3 + 50 + 0) / 3)
    with pytest.raises(DataError, match="not a class index"):
        classification_metrics([3], [0], ["a", "b"])
    with pytest.raises(DataError, match="no labelled examples"):
        classification_metrics([], [], ["a"])


@pytest.mark.slow
def test_eval_classify_end_to_end(demo_root, tmp_path, capsys, monkeypatch):
    export_pairs(demo_root, tmp_path, 60, label=True)
    code, _, err = run(capsys, "prepare", "pairs", str(tmp_path / "data.jsonl"), "--format", "jsonl",
                       "--image-col", "image", "--caption-col", "caption", "--label-col", "label",
                       "--val-fraction", "0.25", "--tokenizer", str(demo_root / "demo_data" / "tokenizer"),
                       "--out", str(tmp_path / "cls"), "--no-progress")
    assert code == 0, err
    code, _, err = run(capsys, "finetune", "classify", "tiny", f"finetune.classify.dataset={tmp_path / 'cls'}",
                       "finetune.classify.init=", "finetune.classify.max_steps=4", "train.log_every=4",
                       "data.batch_size=16", f"train.output_dir={tmp_path / 'runs'}")
    assert code == 0, err
    run_dir = tmp_path / "runs" / "tiny-finetune-classify"
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "eval", "classify", "--model", str(run_dir))
    assert code == 0, err
    report = json.loads((run_dir / "eval" / "classify.json").read_text())
    assert (report["dataset"], report["dataset_split"]) == (str(tmp_path / "cls"), "val")  # from the run's recipe
    metrics = report["metrics"]
    val = open_prepared(tmp_path / "cls").split("val")
    pairs = sum(len(captions) for captions in val["captions"])
    matrix = metrics["confusion_matrix"]
    assert metrics["class_names"] == ["circle", "square", "triangle"] and len(matrix) == 3
    assert metrics["num_examples"] == pairs == sum(map(sum, matrix))
    assert metrics["num_correct"] == sum(matrix[i][i] for i in range(3))
    assert metrics["accuracy"] == pytest.approx(100 * metrics["num_correct"] / pairs)
    for index, name in enumerate(metrics["class_names"]):  # support: the val pairs labelled with the class
        expected = sum(len(c) for c, label in zip(val["captions"], val["label"]) if label == index)
        assert metrics["per_class"][name]["support"] == expected == sum(matrix[index])
    assert "confusion matrix" in out and "precision" in out and "triangle" in out
    # the report follows the output rule like the other eval commands
    code, _, err = run(capsys, "eval", "classify", "--model", str(run_dir))
    assert code == 2 and "--overwrite" in err
    assert run(capsys, "eval", "classify", "--model", str(run_dir), "--overwrite")[0] == 0
    # DIR:SPLIT works without any [eval.classify] section; a model without the classify head is one clear line
    other = make_model(tmp_path / "itc", demo_root / "demo_data", ["pooler", "itc"], image_size=40)
    code, _, err = run(capsys, "eval", "classify", "--model", str(other), "tiny", "--split", "cls:val")
    assert code == 2
    assert "no 'classify' head" in err and "vlmo finetune classify" in err
