"""``vlmo eval retrieval|vqa|nlvr2`` on the demo data with tiny random models (no training): reports are written
where promised and say how they were computed; user errors end with exit code 2 and one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import run
from vlmo_cli.factory import save_model
from vlmo_cli.cli.app import main
from vlmo_cli.data.store import open_prepared
from vlmo_cli.data.tokenizer import load_tokenizer
from vlmo_cli.errors import CheckpointError, DataError
from vlmo_cli.evaluate.target import default_report_path, eval_target
from vlmo_cli.evaluate.vqa import run_vqa
from vlmo_cli.model.config import get_config
from vlmo_cli.model.vlmo import VLMo


def make_model(directory: Path, demo: Path, heads: list[str], **overrides) -> Path:
    """A random tiny model directory carrying the demo tokenizer (seeded: same weights every session)."""
    torch.manual_seed(0)
    answers = json.loads((demo / "vqa" / "answers.json").read_text())
    cfg = get_config("tiny", vocab_size=160, heads=heads, vqa_num_answers=len(answers), max_text_len=16, **overrides)
    save_model(VLMo(cfg), directory)
    load_tokenizer(demo / "tokenizer").save(directory)
    return directory


@pytest.fixture(scope="module")
def models(demo_root, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval_models")
    demo = demo_root / "demo_data"
    return {
        "itm": make_model(root / "itm", demo, ["pooler", "itc", "itm", "vqa"], image_size=40),
        "itc": make_model(root / "itc", demo, ["pooler", "itc"], image_size=40),
        "nlvr2": make_model(root / "nlvr2", demo, ["pooler", "nlvr2"], num_modality_types=3, image_size=40),
    }


@pytest.fixture()
def in_demo(demo_root, monkeypatch):
    monkeypatch.chdir(demo_root)
    return demo_root


def test_retrieval_report_with_rerank_and_examples(in_demo, models, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, stdout, err = run(capsys, "eval", "retrieval", "--model", str(models["itm"]), "tiny",
                            "--split", "demo_data/pairs:val", "--rerank-k", "2", "--examples", "2",
                            "--out", str(out))
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["split"] == "demo_data/pairs:val" and report["dataset_split"] == "val"
    assert (report["num_images"], report["num_texts"]) == (100, 200)
    assert report["rerank_k"] == 2 and "ITM" in report["rerank_scorer"]
    assert set(report["timings_s"]) == {"encode", "rank", "rerank"}
    assert all(v is not None and v >= 0 for v in report["timings_s"].values())
    for key in ("tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10", "r_mean"):
        assert 0 <= report["metrics"][key] <= 100 and key in report["metrics_reranked"]
    # re-ranking only reorders the top 2: R@5 and R@10 cannot change
    for key in ("tr_r5", "ir_r10"):
        assert report["metrics_reranked"][key] == report["metrics"][key]
    assert "any of the image's captions" in report["protocol"]
    from PIL import Image

    with Image.open(report["examples"]) as grid:
        assert grid.size[0] > grid.size[1] > 0
    assert "tr_r1" in stdout and "re-rank" in stdout and str(out) in stdout.replace("\n", "")


def test_retrieval_split_names_resolve_from_the_recipe(in_demo):
    coco = eval_target("retrieval", "tiny", split="coco-test")
    assert (coco.dataset, coco.split, coco.label) == (Path("demo_data/pairs"), "test", "coco-test")
    assert coco.image_size == 40 and coco.batch_size == 64 and coco.max_text_len == 16
    explicit = eval_target("retrieval", "tiny", split="elsewhere/pairs:val")
    assert (explicit.dataset, explicit.split) == (Path("elsewhere/pairs"), "val")
    assert eval_target("retrieval", "tiny", ["eval.retrieval.split=val"]).split == "val"
    assert eval_target("vqa", "tiny").split == "val" and eval_target("nlvr2", "tiny").split == "dev"


def test_default_report_goes_into_the_run_folder(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "x"
    (run_dir / "checkpoints" / "step_5").mkdir(parents=True)
    (run_dir / "recipe.toml").write_text("")
    assert default_report_path(run_dir / "checkpoints" / "step_5", "vqa") == run_dir / "eval" / "vqa.json"
    monkeypatch.chdir(tmp_path)
    assert default_report_path(tmp_path / "some_model", "nlvr2") == tmp_path / "eval" / "nlvr2.json"


def test_missing_split_is_exit_code_2_naming_the_available_ones(in_demo, models, capsys):
    code, _, err = run(capsys, "eval", "retrieval", "--model", str(models["itc"]), "tiny", "--split", "nope")
    assert code == 2
    assert "no split 'nope'" in err and "train" in err and "test" in err


def test_rerank_without_itm_head_is_a_clear_error(in_demo, models, capsys):
    code, _, err = run(capsys, "eval", "retrieval", "--model", str(models["itc"]), "tiny", "--rerank-k", "4")
    assert code == 2
    assert "ITM head" in err and "with_itm" in err


def test_missing_model_is_exit_code_2(in_demo, capsys):
    code, _, err = run(capsys, "eval", "nlvr2", "--model", "no/such/model", "tiny")
    assert code == 2 and "no/such/model" in err


def test_vqa_scores_val_and_writes_results(in_demo, models, tmp_path):
    target = eval_target("vqa", "tiny", ["eval.vqa.batch_size=200", "eval.vqa.image_size=32"])
    report, path = run_vqa(models["itm"], target, out=tmp_path / "v.json", submission=True)
    assert path.exists() and report["labelled"] and report["num_questions"] == 800
    metrics = report["metrics"]
    assert set(metrics["per_answer_type"]) == {"yes/no", "number", "other"}
    assert {"what color", "how many"} <= set(metrics["per_question_type"])
    assert 0 <= metrics["overall"] <= 100 and report["majority_baseline"]["answer"]
    results = json.loads(Path(report["results_file"]).read_text())
    assert len(results) == 800 and len({r["question_id"] for r in results}) == 800
    # the same file scored through --predictions gives the same numbers (one scoring code path)
    rows = open_prepared("demo_data/vqa").split("val")
    questions = [{"question_id": int(r["question_id"]), "image_id": r["image_id"], "question": r["question"]}
                 for r in rows]
    annotations = [{"question_id": int(r["question_id"]), "answer_type": r["answer_type"],
                    "question_type": r["question_type"],
                    "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(r["answers"])]} for r in rows]
    (tmp_path / "q.json").write_text(json.dumps({"questions": questions}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": annotations}))
    code = main_code(["eval", "vqa", "--predictions", report["results_file"], "--questions", str(tmp_path / "q.json"),
                      "--annotations", str(tmp_path / "a.json"), "--out", str(tmp_path / "scored.json")])
    assert code == 0
    scored = json.loads((tmp_path / "scored.json").read_text())["metrics"]
    assert scored["overall"] == metrics["overall"] and scored["per_question_type"] == metrics["per_question_type"]


def main_code(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def test_vqa_split_without_answers_writes_a_deduplicated_submission(in_demo, models, tmp_path, monkeypatch):
    from vlmo_cli.evaluate import vqa as run_module

    target = eval_target("vqa", "tiny")
    qids = [int(q) for q in open_prepared("demo_data/vqa").split("val")["question_id"]]
    monkeypatch.setattr(run_module, "_vqa_official", lambda rows: ([], []))  # as for test-dev: no answers
    # a padded distributed sampler repeats questions: 7 duplicates (3 with another answer) must be dropped
    pairs = [(q, "yes") for q in qids] + [(q, "no" if i < 3 else "yes") for i, q in enumerate(qids[:7])]
    monkeypatch.setattr(run_module, "predict_vqa", lambda model, target, answers: (pairs, 0.0))
    report, _ = run_vqa(models["itm"], target, out=tmp_path / "t.json")
    assert not report["labelled"] and report["duplicates_dropped"] == 7
    entries = json.loads(Path(report["submission"]).read_text())
    assert [e["question_id"] for e in entries] == qids and {e["answer"] for e in entries} == {"yes"}
    monkeypatch.setattr(run_module, "predict_vqa", lambda model, target, answers: (pairs[:797], 0.0))
    with pytest.raises(DataError, match="no answer for 3"):
        run_vqa(models["itm"], target, out=tmp_path / "t2.json")


def test_vqa_needs_a_matching_vqa_head(in_demo, models, tmp_path):
    with pytest.raises(CheckpointError, match="no 'vqa' head"):
        run_vqa(models["itc"], eval_target("vqa", "tiny"), out=tmp_path / "x.json")


def test_vqa_predictions_mode_checks_its_arguments(in_demo, capsys, tmp_path):
    code, _, err = run(capsys, "eval", "vqa", "--predictions", str(tmp_path / "r.json"))
    assert code == 2 and "--annotations" in err
    code, _, err = run(capsys, "eval", "vqa")
    assert code == 2 and "--model" in err


def test_nlvr2_accuracy_and_consistency(in_demo, models, tmp_path, capsys):
    out = tmp_path / "n.json"
    code, stdout, err = run(capsys, "eval", "nlvr2", "--model", str(models["nlvr2"]), "tiny", "--out", str(out),
                            "eval.nlvr2.batch_size=100")
    assert code == 0, err
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert metrics["num_examples"] == 200 and 0 <= metrics["accuracy"] <= 100
    assert metrics["num_correct"] == round(metrics["accuracy"] * 2)
    lines = Path(report["predictions"]).read_text().splitlines()
    assert len(lines) == 200 and lines[0].split(",")[1] in ("True", "False")
    assert "consistency" in stdout


def test_vqa_examples_picture_beside_the_report(in_demo, models, tmp_path, capsys):
    from PIL import Image

    from vlmo_cli.evaluate.examples_vqa import vqa_examples_size

    out = tmp_path / "v.json"
    code, stdout, err = run(capsys, "eval", "vqa", "--model", str(models["itm"]), "tiny", "--examples", "3",
                            "--out", str(out), "eval.vqa.batch_size=200", "eval.vqa.image_size=32")
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["examples"] == str(tmp_path / "v-examples.png")
    with Image.open(report["examples"]) as picture:
        assert picture.format == "PNG"
        assert picture.size == vqa_examples_size(3, evaluator=report["metrics"]["evaluator"])
    assert "examples:" in stdout
    # a second run refuses the previous picture without --overwrite, and replaces it with it
    code, _, err = run(capsys, "eval", "vqa", "--model", str(models["itm"]), "tiny", "--examples", "3",
                       "--out", str(out), "eval.vqa.batch_size=200", "eval.vqa.image_size=32")
    assert code == 2 and "--overwrite" in err
    # a file eval did not write is never replaced, even with --overwrite
    other = tmp_path / "w.json"
    (tmp_path / "w-examples.png").write_text("my notes")
    code, _, err = run(capsys, "eval", "vqa", "--model", str(models["itm"]), "tiny", "--examples", "2",
                       "--out", str(other), "--overwrite", "eval.vqa.batch_size=200", "eval.vqa.image_size=32")
    assert code == 2 and "w-examples.png" in err.replace("\n", "")
    assert (tmp_path / "w-examples.png").read_text() == "my notes" and not other.exists()


def test_vqa_examples_need_a_model_and_a_count_of_zero_or_more(in_demo, models, capsys, tmp_path):
    code, _, err = run(capsys, "eval", "vqa", "--predictions", str(tmp_path / "r.json"), "--annotations",
                       str(tmp_path / "a.json"), "--examples", "2")
    assert code == 2 and "--examples needs --model" in err
    code, _, err = run(capsys, "eval", "nlvr2", "--model", str(models["nlvr2"]), "tiny", "--examples", "-1",
                       "--out", str(tmp_path / "n.json"))
    assert code == 2 and "--examples must be >= 0" in err


def test_nlvr2_examples_picture_beside_the_report(in_demo, models, tmp_path, capsys):
    from PIL import Image

    from vlmo_cli.evaluate.examples_nlvr2 import nlvr2_examples_size

    out = tmp_path / "n.json"
    code, stdout, err = run(capsys, "eval", "nlvr2", "--model", str(models["nlvr2"]), "tiny", "--examples", "4",
                            "--out", str(out), "eval.nlvr2.batch_size=100")
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["examples"] == str(tmp_path / "n-examples.png")
    with Image.open(report["examples"]) as picture:
        assert picture.size == nlvr2_examples_size(4)
    # --overwrite replaces the report and its picture
    code, _, err = run(capsys, "eval", "nlvr2", "--model", str(models["nlvr2"]), "tiny", "--examples", "2",
                       "--out", str(out), "--overwrite", "eval.nlvr2.batch_size=100")
    assert code == 0, err
    with Image.open(tmp_path / "n-examples.png") as picture:
        assert picture.size == nlvr2_examples_size(2)
