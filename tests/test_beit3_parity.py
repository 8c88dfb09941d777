"""BEiT-3 reproduces torchscale's ``BEiT3`` (fp32, to 1e-5) on the image, masked-image, text, padded pair and
captioning-mask paths: from the committed golden fixture, and live when torchscale is importable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmo_cli.interop.beit3 import convert_state
from vlmo_cli.model.beit3_heads import captioning_mask
from vlmo_cli.factory import build_beit3

#: golden data of torchscale 0.3.0 (tests/fixtures/beit3-tiny/README.md says how they were made)
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "beit3-tiny"
TOL = 1e-5


def _paths(model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    image, ids, pad = inputs["image"], inputs["text_ids"], inputs["text_padding_mask"]
    with torch.no_grad():
        return {
            "image": model.encode_image(image).features,
            "image_masked": model.encode_image(image, inputs["vision_masked_position"].bool()).features,
            "text": model.encode_text(ids, pad).features,
            "pair": model.encode_pair(image, ids, pad).features,
            "pair_captioning": model(ids, image, pad, attn_mask=captioning_mask(
                model.config.num_image_tokens, ids.shape[1])).features,
        }


def _convert(state: dict[str, torch.Tensor], num_heads: int):
    converted = convert_state(state, "torchscale state dict", num_heads=num_heads)
    return build_beit3(converted.state, converted.config, "fixture").eval()


def test_fixture_parity():
    """Every path, padding included, matches torchscale's outputs stored in the fixture."""
    encoder = json.loads((FIXTURE / "config.json").read_text())["encoder_config"]
    model = _convert(load_file(str(FIXTURE / "state_dict.safetensors")), encoder["encoder_attention_heads"])
    cfg = model.config
    assert (cfg.embed_dim, cfg.depth, cfg.ffn_dim, cfg.vocab_size, cfg.image_size, cfg.patch_size) == (
        encoder["encoder_embed_dim"], encoder["encoder_layers"], encoder["encoder_ffn_embed_dim"],
        encoder["vocab_size"], encoder["img_size"], encoder["patch_size"])
    expected = load_file(str(FIXTURE / "outputs.safetensors"))
    got = _paths(model, load_file(str(FIXTURE / "inputs.safetensors")))
    assert set(got) == set(expected)
    for name, value in got.items():
        assert value.shape == expected[name].shape, name
        diff = (value - expected[name]).abs().max().item()
        assert diff < TOL, f"{name}: max abs diff {diff}"


def test_fixture_padding_is_exercised():
    """The fixture's second text is padded and its pair output differs from an unpadded run (the mask matters)."""
    inputs = load_file(str(FIXTURE / "inputs.safetensors"))
    assert inputs["text_padding_mask"][1].sum() > 0 and inputs["text_padding_mask"][0].sum() == 0
    model = _convert(load_file(str(FIXTURE / "state_dict.safetensors")), 4)
    with torch.no_grad():
        unmasked = model.encode_pair(inputs["image"], inputs["text_ids"]).features
    expected = load_file(str(FIXTURE / "outputs.safetensors"))["pair"]
    assert (unmasked[1] - expected[1]).abs().max() > 1e-3
    assert (unmasked[0] - expected[0]).abs().max() < TOL


def test_live_torchscale_parity():
    """A fresh torchscale BEiT3 (random weights, small but not the fixture's shape), converted, matches it."""
    try:
        from torchscale.architecture.config import EncoderConfig
        from torchscale.model.BEiT3 import BEiT3
    except Exception:  # noqa: BLE001 - torchscale (and the fairscale it imports) is an optional reference
        pytest.skip("torchscale is not importable (it pins timm 0.6.13: install torchscale==0.3.0 and fairscale==0.4.0 "
                    "with --no-deps into a separate folder on PYTHONPATH)")
    torch.manual_seed(11)
    args = EncoderConfig(img_size=48, patch_size=16, vocab_size=300, multiway=True, layernorm_embedding=False,
                         normalize_output=True, no_output_layer=True, encoder_embed_dim=96, encoder_attention_heads=6,
                         encoder_ffn_embed_dim=160, encoder_layers=3, max_source_positions=40)
    reference = BEiT3(args).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model = _convert(dict(reference.state_dict()), 6)
    g = torch.Generator().manual_seed(5)
    image, ids = torch.randn(3, 3, 48, 48, generator=g), torch.randint(0, 300, (3, 9), generator=g)
    pad = torch.zeros(3, 9, dtype=torch.long)
    pad[1, 4:] = 1
    pad[2, 8:] = 1
    masked = torch.rand(3, 9, generator=g) < 0.5
    with torch.no_grad():
        expected = {
            "image": reference(visual_tokens=image)["encoder_out"],
            "image_masked": reference(visual_tokens=image, vision_masked_position=masked)["encoder_out"],
            "text": reference(textual_tokens=ids, text_padding_position=pad)["encoder_out"],
            "pair": reference(textual_tokens=ids, visual_tokens=image, text_padding_position=pad)["encoder_out"],
            "pair_captioning": reference(textual_tokens=ids, visual_tokens=image, text_padding_position=pad,
                                         attn_mask=captioning_mask(10, 9))["encoder_out"],
        }
    got = _paths(model, {"image": image, "text_ids": ids, "text_padding_mask": pad,
                         "vision_masked_position": masked.long()})
    for name, value in got.items():
        diff = (value - expected[name]).abs().max().item()
        assert diff < TOL, f"{name}: max abs diff {diff}"
