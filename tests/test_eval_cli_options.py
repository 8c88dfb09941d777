"""``vlmo eval`` as a user drives it: the VQA evaluator version and duplicate ids of a predictions file, warnings for
trivially small retrieval pools, user-supplied names printed literally, and an eval of a run folder taking the
run's own recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.text import Text

from helpers import run
from test_eval_cli import make_model
from test_eval_vqa_metrics import annotation
from vlmo_cli.data.store import open_prepared
from vlmo_cli.config.recipe import load_recipe

# Question 1: ten unanimous "Yes" -- master compares raw strings (prediction "Yes": 1.0), legacy lowercases only the
# prediction (0.0). Question 2: "two" among differing answers -- master maps both sides to "2" (k = 5: 1.0), legacy
# only the prediction (0.0). Question 3: "red" for both (1.0). Official 100.0, legacy 33.33.
ANNOTATIONS = {"annotations": [annotation(1, ["Yes"] * 10, "yes/no", "is"),
                               annotation(2, ["two"] * 5 + ["3"] * 5, "number", "how"),
                               annotation(3, ["red"] * 10, "other", "what")]}
RESULTS = [{"question_id": 1, "answer": "Yes"}, {"question_id": 2, "answer": "two"},
           {"question_id": 3, "answer": "red"}]


@pytest.fixture()
def vqa_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a.json").write_text(json.dumps(ANNOTATIONS))
    Path("r.json").write_text(json.dumps(RESULTS))
    return tmp_path


def score(capsys, *extra: str) -> tuple[int, str, str, dict | None]:
    code, out, err = run(capsys, "eval", "vqa", "--predictions", "r.json", "--annotations", "a.json",
                         "--out", "o.json", "--overwrite", *extra)  # each call replaces the previous report
    report = json.loads(Path("o.json").read_text()) if code == 0 else None
    return code, out, err, report


def test_vqa_evaluator_official_by_default_legacy_on_request(vqa_files, capsys):
    code, out, err, report = score(capsys)
    assert code == 0, err
    metrics = report["metrics"]
    assert metrics["overall"] == 100.0
    assert (metrics["evaluator"], metrics["evaluator_commit"]) == ("official", "a013f00")
    assert "official (GT-Vision-Lab/VQA a013f00)" in out
    code, out, err, report = score(capsys, "--evaluator", "legacy")
    assert code == 0, err
    assert report["metrics"]["overall"] == 33.33 and report["metrics"]["evaluator_commit"] == "458a8b2"
    assert "legacy (GT-Vision-Lab/VQA 458a8b2)" in out
    code, _, err, _ = score(capsys, "--evaluator", "master")
    assert code == 2 and "unknown VQA evaluator 'master'; allowed: official, legacy" in err


def test_recipe_key_chooses_the_vqa_evaluator():
    assert load_recipe("tiny").resolve("eval.vqa").task.evaluator == "official"
    assert load_recipe("tiny", ["eval.vqa.evaluator=legacy"]).resolve("eval.vqa").task.evaluator == "legacy"


def test_conflicting_duplicate_ids_are_refused_or_deduplicated(vqa_files, capsys):
    # question 3 first "red" (1.0), then "blue" (0.0); question 1 repeated with the same answer
    Path("r.json").write_text(json.dumps(RESULTS + [{"question_id": 3, "answer": "blue"}, RESULTS[0]]))
    code, out, err, _ = score(capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "error: results: 1 (e.g. 3) question ids have several different answers; keep one with --dedupe first or "
        "--dedupe last"]
    code, out, err, report = score(capsys, "--dedupe", "first")
    assert code == 0, err
    assert report["metrics"]["overall"] == 100.0 and report["metrics"]["num_duplicate_results"] == 2
    assert "duplicate ids dropped (dedupe first)" in out
    code, out, err, report = score(capsys, "--dedupe", "last")
    assert code == 0, err
    assert report["metrics"]["overall"] == 66.67 and report["metrics"]["num_conflicting_duplicates"] == 1
    code, _, err, _ = score(capsys, "--dedupe", "middle")
    assert code == 2 and "allowed: first, last" in err


def test_user_supplied_paths_are_printed_literally(vqa_files, capsys):
    out_path = Path("[red]x[/red]") / "o.json"
    code, out, err = run(capsys, "eval", "vqa", "--predictions", "r.json", "--annotations", "a.json",
                         "--out", str(out_path))
    assert code == 0, err
    assert f"report: {out_path}" in out  # rich markup would have hidden "[red]" and "[/red]"


# --- retrieval on a tiny pool ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_image(demo_root, tmp_path_factory) -> Path:
    """A prepared pairs dataset whose split ``train`` holds one image with two captions."""
    root = tmp_path_factory.mktemp("one_image")
    row = open_prepared(demo_root / "demo_data" / "pairs").split("train")[0]
    (root / "0.png").write_bytes(row["image"]["bytes"])
    lines = [json.dumps({"image": "0.png", "caption": caption, "id": 0}) for caption in row["captions"][:2]]
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    from vlmo_cli.cli.app import main

    main(["prepare", "pairs", str(root / "data.jsonl"), "--format", "jsonl", "--image-col", "image",
          "--caption-col", "caption", "--id-col", "id", "--tokenizer", str(demo_root / "demo_data" / "tokenizer"),
          "--out", str(root / "one"), "--no-progress"])
    return root


def test_retrieval_on_one_image_warns_and_reports_the_pool(demo_root, one_image, tmp_path, capsys, monkeypatch):
    model = make_model(tmp_path / "itc", demo_root / "demo_data", ["pooler", "itc"], image_size=40)
    monkeypatch.chdir(one_image)
    code, out, err = run(capsys, "eval", "retrieval", "--model", str(model), "tiny", "--split", "one:train",
                         "--out", "r.json")
    assert code == 0, err
    report = json.loads(Path("r.json").read_text())
    assert report["pool"] == {"images": 1, "texts": 2}
    assert report["metrics"]["ir_r1"] == 100.0  # what the warning is about: one candidate, always found
    assert report["warnings"] == [
        "IR@1, IR@5, IR@10 = 100 % by construction: only 1 candidate images (K >= pool)",
        "TR@5, TR@10 = 100 % by construction: only 2 candidate texts (K >= pool)",
        "small candidate pool (1 images, 2 texts; under 100): recall is not comparable with Flickr30k 1k / COCO 5k "
        "test numbers",
    ]
    flat = " ".join(out.split())
    assert "warning: IR@1, IR@5, IR@10 = 100 % by construction" in flat
    # the split name is shown as typed: ":train:" in the title is not turned into an emoji
    assert "retrieval on one:train: pool of 1 images, 2 texts" in flat
    assert Text.from_markup(":train:").plain != ":train:"  # what rich would have made of it


# --- a run folder's own recipe ----------------------------------------------------------------------------------------


def test_eval_of_a_run_folder_uses_the_runs_recipe(demo_root, one_image, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(one_image)
    run_dir = tmp_path / "runs" / "x"
    make_model(run_dir / "checkpoints" / "step_1", demo_root / "demo_data", ["pooler", "itc"], image_size=40)
    (run_dir / "checkpoints" / "latest").write_text("step_1\n")
    stage = load_recipe("tiny", ["finetune.retrieval_coco.dataset=one", "finetune.retrieval_coco.val_split=train",
                                 "finetune.retrieval_coco.image_size=32", "data.max_text_len=12"]
                        ).resolve("finetune.retrieval_coco")
    (run_dir / "recipe.toml").write_text(stage.to_toml())
    code, out, err = run(capsys, "eval", "retrieval", "--model", str(run_dir), "--out", "r.json", "--overwrite")
    assert code == 0, err
    report = json.loads(Path("r.json").read_text())
    # the run's settings and data, not base's [eval.retrieval] (data/coco_karpathy, test, 384 px)
    assert report["recipe"] == str(run_dir / "recipe.toml")
    assert report["image_size"] == 32 and report["image_size_resized_from"] == 40
    assert (report["dataset"], report["dataset_split"]) == ("one", "train")
    assert report["max_text_len"] == 12
    # an override still applies on top of the run's recipe (the first positional is an override here)
    code, out, err = run(capsys, "eval", "retrieval", "--model", str(run_dir), "eval.retrieval.image_size=24",
                         "--out", "r2.json")
    assert code == 0, err
    assert json.loads(Path("r2.json").read_text())["image_size"] == 24
