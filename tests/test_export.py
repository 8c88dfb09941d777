"""Export: a clean model directory with a README card, and ONNX towers checked against PyTorch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import run
from vlmo_cli.cli.app import main
from vlmo_cli.data.transforms import build_transform
from vlmo_cli.inference.embed import load_embeddings
from vlmo_cli.inference.export import ONNX_TOLERANCE, export_onnx, export_safetensors
from vlmo_cli.model.flops import parameter_counts
from vlmo_cli.model.config import get_config
from vlmo_cli.factory import load_model, save_model
from vlmo_cli.model.vlmo import VLMo


def _model(seed: int = 0) -> VLMo:
    torch.manual_seed(seed)
    model = VLMo(get_config("tiny", vocab_size=300))
    with torch.no_grad():  # a non-trivial position table so the text/image bias paths matter
        model.relative_position_bias_table.normal_(0, 0.5)
    return model.eval()


@pytest.fixture()
def run_dir(tmp_path):
    """A run folder as the trainer writes it: recipe, checkpoints/step_N (+ latest), eval results."""
    run = tmp_path / "runs" / "demo"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n")
    ckpt = save_model(_model(), run / "checkpoints" / "step_5", extra_files={"vocab.txt": str(vocab)})
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 5, "epoch": 1, "stage": "pretrain-vl"}))
    torch.save({"fake_optimizer": torch.zeros(3)}, ckpt / "optimizer.pt")
    (run / "checkpoints" / "latest").write_text("step_5\n")
    (run / "recipe.toml").write_text('[model]\nsize = "tiny"\n')
    (run / "eval").mkdir()
    (run / "eval" / "retrieval_coco.json").write_text(json.dumps({"i2t": {"r1": 12.5, "r5": 40.0}, "t2i": {"r1": 9.0}}))
    return run


def test_safetensors_export_of_a_run(run_dir, tmp_path):
    out = export_safetensors(run_dir / "checkpoints", tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == [".vlmo-output.json", "README.md", "config.json",
                                                     "model.safetensors", "preprocessing.json", "recipe.toml",
                                                     "vocab.txt"]
    source = load_file(str(run_dir / "checkpoints" / "step_5" / "model.safetensors"))
    exported = load_file(str(out / "model.safetensors"))
    assert source.keys() == exported.keys()
    assert all(torch.equal(source[k], exported[k]) for k in source)
    card = (out / "README.md").read_text()
    total = sum(p.numel() for p in load_model(out).parameters())
    assert f"| parameters | {total:,} |" in card
    assert "| 4 × 128 |" in card and "vision-language experts" in card
    assert "| step | 5 |" in card and "| stage | pretrain-vl |" in card and "recipe.toml" in card
    assert "### retrieval_coco" in card and "| i2t.r1 | 12.5 |" in card and "| t2i.r1 | 9 |" in card


def test_safetensors_export_without_provenance(tmp_path):
    model_dir = save_model(_model(), tmp_path / "plain")
    out = export_safetensors(model_dir, tmp_path / "export")
    card = (out / "README.md").read_text()
    assert "No training record was found" in card and "No evaluation results were found" in card
    assert not (out / "vocab.txt").exists()


def test_parameter_counts_cover_every_parameter():
    model = _model()
    counts = parameter_counts(model)
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    assert counts["vision experts"] == counts["language experts"]


def test_onnx_towers_match_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model_dir = save_model(_model(1), tmp_path / "model")
    diffs = export_onnx(model_dir, tmp_path / "onnx")
    assert set(diffs) == {"image_encoder.onnx", "text_encoder.onnx"}
    assert all(0 <= d <= ONNX_TOLERANCE for d in diffs.values())
    # independent check at another batch size, with padding
    model = load_model(model_dir).eval()
    text = ort.InferenceSession(str(tmp_path / "onnx" / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    image = ort.InferenceSession(str(tmp_path / "onnx" / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    ids = torch.randint(1, 300, (4, 40))
    mask = torch.ones(4, 40, dtype=torch.long)
    mask[0, 7:] = 0
    mask[2, 30:] = 0
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want_text, want_image = model.encode_text(ids, mask), model.encode_image(pixels)
        unpadded_reference = model.encode_text(ids, torch.ones_like(mask))
    got_text = torch.from_numpy(text.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0])
    got_image = torch.from_numpy(image.run(None, {"pixel_values": pixels.numpy()})[0])
    torch.testing.assert_close(got_text, want_text, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_image, want_image, atol=1e-5, rtol=0)
    assert (got_text[0] - unpadded_reference[0]).abs().max() > 1e-5  # the mask is honoured, not baked in
    torch.testing.assert_close(got_text.norm(dim=-1), torch.ones(4))
    info = json.loads((tmp_path / "onnx" / "onnx_export.json").read_text())
    assert info["text_encoder.onnx"]["inputs"]["input_ids"] == ["batch", 40]


def test_cli_export(run_dir, tmp_path, capsys):
    main(["export", str(run_dir / "checkpoints" / "step_5"), str(tmp_path / "onnx"), "--format", "onnx"])
    printed = capsys.readouterr().out
    assert printed.count("max |onnxruntime - PyTorch|") == 2
    assert (tmp_path / "onnx" / "vocab.txt").exists() and (tmp_path / "onnx" / "preprocessing.json").exists()
    main(["export", str(run_dir / "checkpoints"), str(tmp_path / "st")])
    assert (tmp_path / "st" / "README.md").exists()
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path / "missing"), str(tmp_path / "x")])
    assert exc.value.code == 2


def _readme_python_example() -> str:
    """The Python block of the README's "Using a model" section."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Using a model", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_export_of_a_run_folder_can_encode_text(run_dir, tmp_path, capsys):
    out = tmp_path / "exported"
    code, printed, err = run(capsys, "export", str(run_dir), str(out))
    assert code == 0, err
    assert {"vocab.txt", "preprocessing.json", "config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    assert "vocab.txt" in printed and "preprocessing.json" in printed
    texts = tmp_path / "texts.txt"
    texts.write_text("a cat on a sofa\nhello hello\n")  # the first is the README example's text
    code, _, err = run(capsys, "embed", "--model", str(out), "--texts", str(texts),
                       "--out", str(tmp_path / "t.safetensors"))
    assert code == 0, err
    embedded = load_embeddings(tmp_path / "t.safetensors")
    assert embedded.embeddings.shape == (2, 128)
    # the README's Python example, pointed at the exported folder and a picture of ours
    picture = tmp_path / "cat.jpg"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(picture)
    example = _readme_python_example().replace("runs/tiny-finetune-retrieval_coco", str(out))
    example = example.replace('"cat.jpg"', repr(str(picture)))
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    capsys.readouterr()
    torch.testing.assert_close(namespace["txt"], embedded.embeddings[:1], atol=1e-5, rtol=0)


def test_preprocessing_file_reproduces_the_model_transform(run_dir, tmp_path):
    out = export_safetensors(run_dir, tmp_path / "exported")
    info = json.loads((out / "preprocessing.json").read_text())
    cfg = load_model(out).config
    assert info["image"]["size"] == [cfg.image_size, cfg.image_size] and info["image"]["interpolation"] == "bicubic"
    assert info["text"]["max_length"] == cfg.max_text_len and info["text"]["tokenizer"] == "vocab.txt"
    assert info["text"]["pad_id"] == 0 and info["text"]["cls_id"] == 2 and info["text"]["sep_id"] == 3
    # what a user without this package computes from the file equals the eval transform
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8))
    side = info["image"]["size"]
    pixels = np.asarray(image.resize((side[1], side[0]), Image.BICUBIC), dtype=np.float32) / 255
    pixels = (pixels - np.array(info["image"]["mean"])) / np.array(info["image"]["std"])
    mine = torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32))
    torch.testing.assert_close(mine, build_transform(cfg.image_size, train=False)(image), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_embed_and_search_take_a_tokenizer(run_dir, tmp_path, capsys):
    plain = save_model(_model(), tmp_path / "plain")  # no tokenizer stored
    texts = tmp_path / "texts.txt"
    texts.write_text("hello\n")
    args = ["embed", "--model", str(plain), "--texts", str(texts), "--out", str(tmp_path / "a.safetensors")]
    code, _, err = run(capsys, *args)
    assert code == 2 and "pass --tokenizer" in err
    vocab = run_dir / "checkpoints" / "step_5" / "vocab.txt"
    code, _, err = run(capsys, *args, "--tokenizer", str(vocab))
    assert code == 0, err
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), (0, 0, 255)).save(images / "blue.png")
    code, out, err = run(capsys, "search", "hello", "--model", str(plain), "--index", str(images),
                         "--tokenizer", str(vocab))
    assert code == 0, err
    assert "top 1 for 'hello'" in out and ": 1 images" in out


def test_onnx_export_without_the_extra_names_the_install_command(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed: importing it raises ImportError
    code, out, err = run(capsys, "export", str(run_dir), str(tmp_path / "onnx"), "--format", "onnx")
    assert code == 2
    assert "Traceback" not in out + err
    assert err.strip() == 'error: ONNX export needs the onnx package: pip install "vlmo-cli[onnx]"'
