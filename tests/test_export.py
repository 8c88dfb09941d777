"""Export: a clean model directory with a README card, and ONNX towers checked against PyTorch."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vlmo_cli.cli.app import main
from vlmo_cli.interop.export import ONNX_TOLERANCE, export_onnx, export_safetensors, parameter_counts
from vlmo_cli.model.config import get_config
from vlmo_cli.model.io import load_model, save_model
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
                                                     "model.safetensors", "recipe.toml", "vocab.txt"]
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
    assert (tmp_path / "onnx" / "vocab.txt").exists()
    main(["export", str(run_dir / "checkpoints"), str(tmp_path / "st")])
    assert (tmp_path / "st" / "README.md").exists()
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path / "missing"), str(tmp_path / "x")])
    assert exc.value.code == 2
