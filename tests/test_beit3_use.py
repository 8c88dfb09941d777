"""Using BEiT-3 models through the same commands as VLMo ones: ``vlmo finetune`` → ``vlmo eval``, ``vlmo embed`` and
``vlmo search`` on BEiT-3 run folders of the ``beit3_tiny`` recipe (the family comes from the model directory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import export_pairs, run
from PIL import Image
from test_embed_search import write_images

from vlmo_cli.factory import load_inference_model
from vlmo_cli.inference.embed import load_embeddings
from vlmo_cli.model.beit3 import Beit3
from vlmo_cli.model.family import text_embeddings

QUICK = ["train.trackers=[]", "train.report=false", "data.batch_size=8", "train.log_every=1"]


@pytest.fixture(scope="module")
def small_pairs(demo_root, tmp_path_factory) -> Path:
    """60 labelled demo pairs (class = the shape in the caption), 25 % of them in ``val``."""
    tmp = tmp_path_factory.mktemp("beit3_pairs")
    export_pairs(demo_root, tmp, 60, label=True)
    out = tmp / "pairs"
    from vlmo_cli.cli.app import main

    main(["prepare", "pairs", str(tmp / "data.jsonl"), "--format", "jsonl", "--image-col", "image",
          "--caption-col", "caption", "--label-col", "label", "--val-fraction", "0.25",
          "--tokenizer", str(demo_root / "demo_data" / "tokenizer"), "--out", str(out), "--no-progress"])
    return out


def finetune(capsys, task: str, section: str, runs: Path, *extra: str) -> Path:
    code, out, err = run(capsys, "finetune", task, "beit3_tiny", *QUICK, f"train.output_dir={runs}", *extra)
    assert code == 0, err
    assert "initialised at random" in out
    return runs / f"beit3-tiny-{section.replace('.', '-')}"


@pytest.fixture(scope="module")
def retrieval_run(small_pairs, tmp_path_factory) -> Path:
    """A BEiT-3 retrieval fine-tune of 4 steps on the small pairs."""
    from vlmo_cli.cli.app import main  # capsys is function-scoped: the module fixture runs the CLI directly

    runs = tmp_path_factory.mktemp("beit3_runs")
    try:
        main(["finetune", "retrieval", "beit3_tiny", *QUICK, f"train.output_dir={runs}",
              f"finetune.retrieval_coco.dataset={small_pairs}", "finetune.retrieval_coco.max_steps=4"])
    except SystemExit as exc:
        assert not exc.code
    return runs / "beit3-tiny-finetune-retrieval_coco"


def test_retrieval_finetune_then_eval(retrieval_run, small_pairs, capsys):
    model = load_inference_model(retrieval_run, device="cpu")
    assert isinstance(model.model, Beit3) and model.model.config.heads == ["retrieval"]
    assert model.tokenizer is not None  # saved with the checkpoint
    metrics = [json.loads(line) for line in (retrieval_run / "metrics.jsonl").read_text().splitlines()]
    assert all(m["loss"] == m["loss"] for m in metrics if "loss" in m) and any("val_tr_r1" in m for m in metrics)
    code, out, err = run(capsys, "eval", "retrieval", "--model", str(retrieval_run), "beit3_tiny",
                         "--split", f"{small_pairs}:val")
    assert code == 0, err
    report = json.loads((retrieval_run / "eval" / "retrieval.json").read_text())
    assert report["num_images"] == 15 and report["num_texts"] == 15
    assert 0 <= report["metrics"]["tr_r1"] <= report["metrics"]["tr_r10"] <= 100
    code, _, err = run(capsys, "eval", "retrieval", "--model", str(retrieval_run), "beit3_tiny",
                       "--split", f"{small_pairs}:val", "--rerank-k", "3", "--overwrite")
    assert code == 2 and "no 'itm' head (heads: retrieval)" in err and "Traceback" not in err


def test_classify_finetune_then_eval(small_pairs, tmp_path, capsys):
    run_dir = finetune(capsys, "classify", "finetune.classify", tmp_path, f"finetune.classify.dataset={small_pairs}",
                       "finetune.classify.max_steps=3")
    model = load_inference_model(run_dir, device="cpu").model
    assert model.config.heads == ["pair_classify"] and model.config.num_classes == 3
    code, out, err = run(capsys, "eval", "classify", "--model", str(run_dir), "beit3_tiny",
                         "--split", f"{small_pairs}:val")
    assert code == 0, err
    report = json.loads((run_dir / "eval" / "classify.json").read_text())
    assert report["metrics"]["num_examples"] == 15 and report["metrics"]["class_names"] == ["circle", "square",
                                                                                           "triangle"]


def test_embed_and_search_with_a_beit3_model(retrieval_run, tmp_path, capsys):
    images = write_images(tmp_path / "imgs", 3)
    code, _, err = run(capsys, "embed", "--model", str(retrieval_run), "--images", str(tmp_path / "imgs"),
                       "--out", str(tmp_path / "img.safetensors"))
    assert code == 0, err
    saved = load_embeddings(tmp_path / "img.safetensors")
    assert saved.embeddings.shape == (3, 128)
    assert torch.allclose(saved.embeddings.norm(dim=1), torch.ones(3), atol=1e-5)

    (tmp_path / "captions.txt").write_text("a red circle\na blue square\n")
    code, _, err = run(capsys, "embed", "--model", str(retrieval_run), "--texts", str(tmp_path / "captions.txt"),
                       "--out", str(tmp_path / "txt.safetensors"))
    assert code == 0, err
    saved = load_embeddings(tmp_path / "txt.safetensors")
    model = load_inference_model(retrieval_run, device="cpu")
    enc = model.tokenizer.encode_batch(["a red circle", "a blue square"], 16)
    expected = text_embeddings(model.model, torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"]))
    assert torch.allclose(saved.embeddings, expected.detach(), atol=1e-5)

    code, out, err = run(capsys, "search", "--model", str(retrieval_run), "--index", str(tmp_path / "imgs"),
                         "--image", str(images[1]), "--top-k", "1")
    assert code == 0, err
    assert "img_1.png" in out  # the query image is its own nearest neighbour
    code, _, err = run(capsys, "search", "--model", str(retrieval_run), "--index", str(tmp_path / "imgs"), "red",
                       "--rerank-k", "2")
    assert code == 2 and "no 'itm' head" in err and "Traceback" not in err


@pytest.mark.slow
def test_vqa_and_nlvr2_finetune_then_eval_on_the_demo(demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(demo_root)
    vqa = finetune(capsys, "vqa", "finetune.vqa", tmp_path, "finetune.vqa.max_steps=4")
    code, out, err = run(capsys, "eval", "vqa", "--model", str(vqa), "beit3_tiny")
    assert code == 0, err
    report = json.loads((vqa / "eval" / "vqa.json").read_text())
    assert report["labelled"] and 0 <= report["metrics"]["overall"] <= 100 and report["num_questions"] == 800

    nlvr2 = finetune(capsys, "nlvr2", "finetune.nlvr2", tmp_path, "finetune.nlvr2.max_steps=4")
    code, out, err = run(capsys, "eval", "nlvr2", "--model", str(nlvr2), "beit3_tiny")
    assert code == 0, err
    report = json.loads((nlvr2 / "eval" / "nlvr2.json").read_text())
    assert 0 <= report["metrics"]["accuracy"] <= 100 and report["metrics"]["num_examples"] == 200


def test_export_and_serve_a_beit3_model(retrieval_run, tmp_path, capsys):
    """``vlmo export`` (a model directory with its card) and the search service of ``vlmo serve`` on a BEiT-3
    retrieval model."""
    from vlmo_cli.errors import VlmoError
    from vlmo_cli.serve.service import SearchService

    code, _, err = run(capsys, "export", str(retrieval_run), str(tmp_path / "exported"))
    assert code == 0, err
    card = (tmp_path / "exported" / "README.md").read_text()
    assert card.startswith("# BEiT-3 tiny") and "| heads | retrieval |" in card and "head: retrieval_head" in card
    assert isinstance(load_inference_model(tmp_path / "exported", device="cpu").model, Beit3)

    paths = write_images(tmp_path / "gallery", 3)
    service, _ = SearchService.open(retrieval_run, index=tmp_path / "gallery", device="cpu")
    with Image.open(paths[1]) as img:
        pixels = service.pixels(img.convert("RGB"))
    [score] = service.score([("a red circle", pixels)])
    expected = float(service.embed_texts(["a red circle"])[0] @ service.embed_images([pixels])[0])
    assert score["similarity"] == pytest.approx(expected, abs=1e-5) and score["itm_probability"] is None
    found = service.nearest(service.embed_images([pixels]), 1)[0]
    assert service.index.path_of(found[0][0]).name == "img_1.png"
    with pytest.raises(VlmoError, match="no VQA or classification head"):
        service.classify([("a red circle", pixels)])


def test_onnx_export_of_a_beit3_model(retrieval_run, tmp_path, capsys):
    """``vlmo export --format onnx``: the two towers of a BEiT-3 retrieval model, checked against PyTorch."""
    pytest.importorskip("onnxruntime")
    code, out, err = run(capsys, "export", str(retrieval_run), str(tmp_path / "onnx"), "--format", "onnx")
    assert code == 0, err
    assert "image_encoder.onnx: max |onnxruntime - PyTorch|" in out and "text_encoder.onnx" in out
    info = json.loads((tmp_path / "onnx" / "onnx_export.json").read_text())
    assert info["config"]["family"] == "beit3" and info["output"]["embedding"] == ["batch", 128]
