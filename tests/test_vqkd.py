"""BEiT v2's VQ-KD visual tokenizer: ``vlmo convert vqkd`` of a file in the released key layout reproduces the
original unilm code's token ids exactly and its features to 1e-5 (golden fixture); the pipeline's pixels map to the
original's input range; sizes come from the weights and the head count from the released shape or --num-heads; each
broken input is one message, exit 2; the BEiT v2 target loss is the cross-entropy at the masked patches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import VQKD_FIXTURE, released_vqkd, run
from safetensors import safe_open
from safetensors.torch import load_file

from vlmo_cli.data.transforms import MEAN, STD
from vlmo_cli.errors import CheckpointError
from vlmo_cli.factory import load_model, load_vqkd
from vlmo_cli.interop.vqkd import convert_state
from vlmo_cli.model.vqkd import VqkdConfig, VqkdTokenizer, tokenizer_input
from vlmo_cli.objectives.masked_data import token_target_loss

TOL = 1e-5


def _convert(capsys, *args: str) -> tuple[int, str, str]:
    """``vlmo convert vqkd ARGS --num-heads 4``: the tiny encoder is not the released one, so the tests state its
    head count as a user would."""
    return run(capsys, "convert", "vqkd", *args, "--num-heads", "4")


def _pipeline_pixels(images: torch.Tensor) -> torch.Tensor:
    """What :func:`vlmo_cli.data.transforms.build_transform` makes of ``ToTensor`` images: ``Normalize(MEAN, STD)``."""
    from torchvision.transforms import Normalize

    return Normalize(MEAN, STD)(images)


# ---------------------------------------------------------------------- parity with the original
def test_the_original_code_s_ids_and_features_are_reproduced(tmp_path, capsys):
    """The fixture's released-layout state dict (decoder and EMA statistics included) converts; on the pipeline's
    pixels of the fixture's images the tokenizer gives the original's ids exactly and its ``encode_task_layer``
    features to 1e-5."""
    code, out, err = _convert(capsys, str(released_vqkd(tmp_path)), str(tmp_path / "out"))
    assert code == 0, err
    golden = load_file(str(VQKD_FIXTURE / "golden.safetensors"))
    tokenizer = load_vqkd(tmp_path / "out")
    x = tokenizer_input(_pipeline_pixels(golden["images"]), MEAN, STD)
    with torch.no_grad():
        features, ids = tokenizer.features(x), tokenizer.tokenize(x)
    diff = (features - golden["features"]).abs().max().item()
    print(f"VQ-KD parity: max abs feature difference {diff:.2e}, ids equal {torch.equal(ids, golden['ids'])}")
    assert diff < TOL
    assert ids.dtype == torch.int64 and torch.equal(ids, golden["ids"])
    assert golden["ids"].unique().numel() > 10  # the fixture exercises many codes, not one


def test_the_head_count_matters(tmp_path, capsys):
    """The same weights read with 8 heads give other features: the parity above pins the head count."""
    path = released_vqkd(tmp_path)
    assert run(capsys, "convert", "vqkd", str(path), str(tmp_path / "h8"), "--num-heads", "8")[0] == 0
    golden = load_file(str(VQKD_FIXTURE / "golden.safetensors"))
    with torch.no_grad():
        features = load_vqkd(tmp_path / "h8").features(tokenizer_input(_pipeline_pixels(golden["images"]), MEAN, STD))
    assert (features - golden["features"]).abs().max() > 1e-3


def test_pipeline_pixels_map_to_the_original_input_range():
    """The original maps ``ToTensor`` images x in [0, 1] to ``x · 255 / 127.5 − 1``; from the pipeline's
    ``(x − 0.5) / 0.5`` that is the pixels themselves, from another normalisation the same [-1, 1] image."""
    x = torch.rand(2, 3, 8, 8)
    expected = x * 255.0 / 127.5 - 1.0
    torch.testing.assert_close(tokenizer_input(_pipeline_pixels(x), MEAN, STD), expected)
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    normalised = (x - torch.tensor(imagenet[0]).view(1, 3, 1, 1)) / torch.tensor(imagenet[1]).view(1, 3, 1, 1)
    torch.testing.assert_close(tokenizer_input(normalised, *imagenet), expected)


# ---------------------------------------------------------------------- what the weights tell
def _released_base_state() -> dict[str, torch.Tensor]:
    """The key layout and shapes of the released ``vqkd_encoder_base_decoder_3x768x12_clip``, on the meta device
    (no memory): a ViT-B/16 encoder, 8192 codes of 32 dimensions, a 3-block decoder to 512-d CLIP targets, the EMA
    statistics and the keys of a file saved with its teacher."""
    with torch.device("meta"):
        state = dict(VqkdTokenizer(VqkdConfig(num_heads=8)).state_dict())
        decoder = VqkdTokenizer(VqkdConfig(image_size=14, patch_size=1, in_chans=32, depth=3, num_heads=8))
        state.update({"decoder." + k.removeprefix("encoder."): v for k, v in decoder.state_dict().items()
                      if k.startswith("encoder.")})
        state.update({"decode_task_layer.0.weight": torch.empty(768, 768), "decode_task_layer.2.weight":
                      torch.empty(512, 768), "quantize.cluster_size": torch.empty(8192),
                      "quantize.embedding.cluster_size": torch.empty(8192), "quantize.embedding.embed_avg":
                      torch.empty(8192, 32), "quantize.embedding.initted": torch.empty(1),
                      "teacher_model.visual.proj": torch.empty(768, 512),
                      "scaling_layer.shift": torch.empty(1, 3, 1, 1)})
    return state


def test_released_layout_gives_every_size_and_the_head_count():
    converted = convert_state(_released_base_state(), "base")
    cfg = converted.config
    assert (cfg.image_size, cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.ffn_dim, cfg.num_heads) == (
        224, 16, 768, 12, 3072, 12)
    assert (cfg.codebook_size, cfg.codebook_dim, cfg.num_patches) == (8192, 32, 196)
    assert "the released VQ-KD encoder (width 768, depth 12, MLP 3072, 16 px patches)" in converted.sources["num_heads"]
    assert set(converted.dropped) == {"decoder", "decode_task_layer", "EMA statistics", "teacher", "scaling_layer"}
    assert "decoder (3 blocks," in converted.describe()
    assert not any(k.startswith(("decoder.", "decode_task_layer.", "teacher", "scaling")) for k in converted.state)
    assert set(converted.state) - {k for k in converted.state if k.startswith(("encoder.", "encode_task_layer."))} == {
        "quantize.embedding.weight"}
    assert convert_state(_released_base_state(), "base", num_heads=16).config.num_heads == 16


def test_other_shapes_need_num_heads(tmp_path, capsys):
    path = released_vqkd(tmp_path)
    code, _, err = run(capsys, "convert", "vqkd", str(path), str(tmp_path / "out"))
    assert code == 2 and "cannot infer the number of attention heads" in err and "--num-heads" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    code, _, err = run(capsys, "convert", "vqkd", str(path), str(tmp_path / "out"), "--num-heads", "5")
    assert code == 2 and "does not divide the width 32" in err


def test_the_summary_says_what_was_kept_and_dropped(tmp_path, capsys):
    code, out, err = _convert(capsys, str(released_vqkd(tmp_path, container="state_dict")), str(tmp_path / "out"))
    assert code == 0, err
    text = " ".join(out.split())
    assert "VQ-KD tokenizer 2×32, 4 heads, MLP 128, 32px in 8px patches (16 tokens per image), codebook 64×8" in text
    assert "num_heads 4 (option --num-heads)" in text
    assert "dropped 27 keys: decode_task_layer (4 keys), decoder (1 block, 19 keys), EMA statistics (4 keys)" in text
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["source"] == "vqkd:vqkd.pth"
        assert len(list(f.keys())) == 37 and "quantize.embedding.weight" in f.keys()


# ---------------------------------------------------------------------- broken inputs
@pytest.mark.parametrize("changes, message", [
    ({"encoder.blocks.1.attn.v_bias": None}, "missing keys [encoder.blocks.1.attn.v_bias]"),
    ({"encoder.blocks.0.gamma_1": torch.ones(32)}, "unexpected keys [encoder.blocks.0.gamma_1]"),
    ({"mim_head.weight": torch.ones(2)}, "unexpected keys [mim_head.weight]"),
    ({"quantize.embedding.weight": torch.ones(64, 6)}, "does not map the width 32 to the codebook's entries (64, 6)"),
    ({"encoder.pos_embed": torch.ones(1, 16, 32)}, "has 16 rows, not CLS + a square patch grid"),
])
def test_weights_that_do_not_fit_are_named(tmp_path, capsys, changes, message):
    code, _, err = _convert(capsys, str(released_vqkd(tmp_path, **changes)), str(tmp_path / "out"))
    assert code == 2, err
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_not_a_vqkd_checkpoint(tmp_path, capsys):
    path = tmp_path / "beit3.pth"
    torch.save({"model": {"beit3.vision_embed.proj.weight": torch.zeros(8, 3, 8, 8)}}, path)
    code, _, err = _convert(capsys, str(path), str(tmp_path / "out"))
    assert code == 2 and "not a VQ-KD checkpoint: missing keys [encoder.patch_embed.proj.weight" in err
    assert "Traceback" not in err


def test_a_truncated_file_is_corrupt(tmp_path, capsys):
    path = released_vqkd(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, _, err = _convert(capsys, str(path), str(tmp_path / "out"))
    assert code == 2 and "corrupt or truncated checkpoint" in err and "Traceback" not in err


class NotATensor:
    """Unpickling an instance needs code from this module."""


def test_pickle_needing_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": load_file(str(VQKD_FIXTURE / "state.safetensors")), "args": NotATensor()}, path)
    code, _, err = _convert(capsys, str(path), str(tmp_path / "out"))
    assert code == 2 and "refused: this file needs code execution" in err and not (tmp_path / "out").exists()


def test_output_directory_rule(tmp_path, capsys):
    """A folder holding anything else is never replaced; a previous conversion only with --overwrite."""
    path = released_vqkd(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = _convert(capsys, str(path), str(tmp_path / "mine"))
    assert code == 2 and (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    assert _convert(capsys, str(path), str(tmp_path / "out"))[0] == 0
    code, _, err = _convert(capsys, str(path), str(tmp_path / "out"))
    assert code == 2 and "--overwrite" in err
    assert _convert(capsys, str(path), str(tmp_path / "out"), "--overwrite")[0] == 0


def test_a_tokenizer_directory_is_no_model(tmp_path, capsys):
    assert _convert(capsys, str(released_vqkd(tmp_path)), str(tmp_path / "out"))[0] == 0
    with pytest.raises(CheckpointError, match="a VQ-KD visual tokenizer"):
        load_model(tmp_path / "out")
    tokenizer = load_vqkd(tmp_path / "out")
    assert not tokenizer.training and not any(p.requires_grad for p in tokenizer.parameters())
    assert all(m.k_bias.eq(0).all() for m in tokenizer.modules() if getattr(m, "k_bias", None) is not None)


# ---------------------------------------------------------------------- the BEiT v2 target
def test_token_target_loss_is_the_cross_entropy_at_the_masked_patches():
    """Labels are the ids of the whole image (the tokenizer sees the pixels as given), the loss the mean
    cross-entropy over every masked patch of the batch, the accuracy that of the arg-max there."""
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 16, 10, generator=g)
    ids = torch.randint(0, 10, (2, 16), generator=g)
    mask = torch.rand(2, 16, generator=g) < 0.4
    pixels = torch.randn(2, 3, 32, 32, generator=g)
    seen = []
    loss_fn = token_target_loss(lambda p: seen.append(p) or ids)
    loss, acc = loss_fn(pred, pixels, mask)
    assert seen[0] is pixels
    torch.testing.assert_close(loss, F.cross_entropy(pred[mask], ids[mask]))
    assert float(acc) == pytest.approx(float((pred[mask].argmax(-1) == ids[mask]).float().mean()))
    perfect = F.one_hot(ids, 10).float() * 50
    assert float(loss_fn(perfect, pixels, mask)[1]) == 1.0
    with pytest.raises(ValueError, match="do not match the predictions"):
        loss_fn(pred[:, :8], pixels, mask[:, :8])
