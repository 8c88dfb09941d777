"""``vlmo quickstart`` end to end (same code path as the shipped command, fewer steps to fit the CI budget): the
final report shows learning against each chance baseline, and ``search`` finds the queried image.

The shipped quickstart's own margins (full step counts, several seeds) are in the README's measured numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmo_cli.data.store import open_prepared
from vlmo_cli.cli.app import app
from vlmo_cli.cli.quickstart import run_quickstart

#: fewer steps than recipes/tiny.toml (same commands, recipe and code path)
REDUCED = [
    "pretrain.vision.max_steps=10", "pretrain.text.max_steps=10", "pretrain.vl.max_steps=60",
    "finetune.vqa.max_steps=60", "finetune.retrieval_coco.max_steps=60", "finetune.nlvr2.max_steps=10",
    "train.log_every=10",
]

# about 80 s: CI runs the full quickstart itself (README's main command, its margins checked) after the suite
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    result = run_quickstart(app, out, overrides=REDUCED)
    return out, result


def test_every_step_ran_and_left_its_outputs(quickstart):
    out, result = quickstart
    names = [s.name for s in result.steps]
    assert names[:4] == ["prepare demo data", "stage 1: pretrain-vision", "stage 2: pretrain-text", "stage 3: pretrain-vl"]
    assert {"eval retrieval", "eval vqa", "eval nlvr2", "export"} <= set(names)
    summary = json.loads((out / "quickstart.json").read_text())
    assert summary["steps"][1]["command"].startswith("vlmo pretrain-vision ")
    for path in summary["paths"].values():
        assert Path(path).exists(), path
    assert (out / "exported" / "tiny-retrieval" / "model.safetensors").exists()
    assert "mim_loss" in result.steps[1].final and "mlm_loss" in result.steps[2].final
    assert list((out / "runs" / "tiny-finetune-retrieval_coco" / "eval").glob("*examples*.png"))
    html_reports = {k for k in summary["paths"] if k.startswith("html ")}
    assert len(html_reports) == 6  # every stage and fine-tuning run
    page = (out / "runs" / "tiny-finetune-retrieval_coco" / "report.html").read_text()
    assert "retrieval.json" in page and "retrieval-examples.png" in page  # re-written after the evaluation
    for run_name, task in (("tiny-finetune-vqa", "vqa"), ("tiny-finetune-nlvr2", "nlvr2")):
        assert (out / "runs" / run_name / "eval" / f"{task}-examples.png").is_file()
        assert f"{task}-examples.png" in (out / "runs" / run_name / "report.html").read_text()


def test_learning_margins_over_chance(quickstart):
    _, result = quickstart
    m, base = result.metrics, result.baselines
    assert m["vqa accuracy"] > base["vqa accuracy"] + 3, (m, base)
    assert m["retrieval ir_r10"] > 2 * base["retrieval ir_r10"], (m, base)
    assert m["retrieval tr_r10"] > 1.5 * base["retrieval tr_r10"], (m, base)


def test_search_finds_the_queried_image(quickstart, tmp_path):
    from vlmo_cli.factory import load_inference_model
    from vlmo_cli.inference.search import search_folder

    out, _ = quickstart
    rows = open_prepared(out / "demo_data" / "pairs").split("test")
    folder = tmp_path / "gallery"
    folder.mkdir()
    for row in rows:
        (folder / f"{row['image_id']}.png").write_bytes(row["image"]["bytes"])
    model = load_inference_model(out / "runs" / "tiny-finetune-retrieval_coco", device="cpu")
    queries = [(row["image_id"], row["captions"][0]) for row in rows.select(range(0, len(rows), 8))]
    found = sum(
        (folder / f"{image_id}.png") in [h.path for h in search_folder(model, folder, text, top_k=10).hits]
        for image_id, text in queries
    )
    assert found >= 2 * len(queries) * 10 / len(rows), f"{found}/{len(queries)}"  # twice chance
