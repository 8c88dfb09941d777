"""Official conversion never guesses: what the weights cannot tell comes from the stored config or an option.

An absolute-position checkpoint holds its head count in no shape; a relative-position table's rows fit several
image-grid / text-length splits. Both are read from the checkpoint's stored config (an official ``model_arch``,
``max_text_len_of_initckpt``) or given by ``--num-heads`` / ``--text-table-len``; otherwise conversion is refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import run
from test_interop_resize import HEADS, VOCAB, _randomise, _Reference
from vlmo_cli.errors import CheckpointError
from vlmo_cli.factory import load_model, load_official
from vlmo_cli.interop.official import infer_architecture
from vlmo_cli.model.config import get_config
from vlmo_cli.model.vlmo import VLMo

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "official-vlmo-tiny-relpos"


def _one_line(err: str) -> str:
    return " ".join(err.split())


def _absolute_checkpoint(path: Path, arch: str | None) -> dict[str, torch.Tensor]:
    """Width 64 with 4 heads (head dim 16): a size no official name has; absolute positions, no layer scale."""
    cfg = get_config("tiny", embed_dim=64, num_heads=4, relative_position=False, layer_scale_init=None,
                     vocab_size=VOCAB, heads=HEADS)
    torch.manual_seed(0)
    model = VLMo(cfg)
    _randomise(model, 5)
    state = dict(model.state_dict())
    config = {"drop_path_rate": 0.1, **({"model_arch": arch} if arch else {})}
    torch.save({"state_dict": state, "hyper_parameters": {"config": config}}, path)
    return state


def _inputs():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, VOCAB, (2, 40), generator=g)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 12:] = 0
    return ids * mask, mask, torch.randn(2, 3, 32, 32, generator=g)


@pytest.mark.parametrize("arch", [None, "vlmo_small_abs_patch8"])
def test_absolute_positions_without_official_arch_is_refused(tmp_path, capsys, arch):
    path = tmp_path / "abs64.pt"
    _absolute_checkpoint(path, arch)
    code, _, err = run(capsys, "convert", "official", str(path), str(tmp_path / "out"))
    message = _one_line(err)
    assert code == 2 and "Traceback" not in err
    assert str(path) in message and "cannot infer the number of attention heads" in message
    assert "--num-heads N" in message and "width 64" in message
    assert ("names no model_arch" if arch is None else "'vlmo_small_abs_patch8' is not an official") in message
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_absolute_positions_with_num_heads_match_the_reference_forward(tmp_path, capsys):
    path = tmp_path / "abs64.pt"
    state = _absolute_checkpoint(path, None)
    code, out, err = run(capsys, "convert", "official", str(path), str(tmp_path / "m"), "--num-heads", "4")
    assert code == 0, err
    assert "num_heads 4 (option --num-heads)" in _one_line(out)
    model = load_model(tmp_path / "m").eval()
    assert model.config.num_heads == 4
    ids, mask, img = _inputs()
    ref = _Reference(state, 4, model.config.depth, model.config.vlffn_start, model.config.patch_size)
    with torch.no_grad():
        pair = model.forward_pair(ids, mask, img)
        pooled, text_feats, image_feats = ref.infer(ids, mask, img)
        torch.testing.assert_close(pair.pooled, pooled, atol=1e-5, rtol=0)
        torch.testing.assert_close(pair.text_features, text_feats, atol=1e-5, rtol=0)
        torch.testing.assert_close(pair.image_features, image_feats, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_image(img), ref.infer_image(img)[0], atol=1e-5, rtol=0)
        # the width // 64 = 1 head an inference by width would pick gives other outputs
        one_head = _Reference(state, 1, model.config.depth, model.config.vlffn_start, model.config.patch_size)
        assert (one_head.infer(ids, mask, img)[1] - text_feats).abs().max() > 0.05


def test_given_value_that_contradicts_the_weights_is_refused(tmp_path, capsys):
    code, _, err = run(capsys, "convert", "official", str(FIXTURE / "checkpoint.pt"), str(tmp_path / "m"),
                       "--num-heads", "2")
    assert code == 2
    assert "option --num-heads 2 contradicts the checkpoint (num_heads 4 from weights)" in _one_line(err)
    assert not (tmp_path / "m").exists()


def _meta_state(size: str) -> dict[str, torch.Tensor]:
    """The state dict of an official-size model with shapes only (nothing allocated)."""
    with torch.device("meta"):
        return dict(VLMo(get_config(size)).state_dict())


def test_official_model_arch_gives_the_heads_of_an_absolute_position_checkpoint():
    state = _meta_state("base_plus")
    inferred = infer_architecture(state, {"model_arch": "vlmo_base_plus_patch16"}, "bp.pt")
    assert inferred.config.num_heads == 16 and inferred.config.embed_dim == 544
    assert inferred.sources["num_heads"] == "model_arch vlmo_base_plus_patch16"
    with pytest.raises(CheckpointError, match="'vlmo_base_patch16' does not have the width and depth of these"):
        infer_architecture(state, {"model_arch": "vlmo_base_patch16"}, "bp.pt")
    with pytest.raises(CheckpointError, match=r"option --num-heads 8 contradicts the checkpoint \(num_heads 16 from"
                                              r" model_arch vlmo_base_plus_patch16\)"):
        infer_architecture(state, {"model_arch": "vlmo_base_plus_patch16"}, "bp.pt", num_heads=8)


def test_relative_table_without_stored_config_needs_the_text_table_length(tmp_path, capsys):
    blob = torch.load(FIXTURE / "checkpoint.pt", weights_only=True)
    bare = tmp_path / "bare.pt"
    torch.save(blob["state_dict"], bare)
    code, _, err = run(capsys, "convert", "official", str(bare), str(tmp_path / "m"))
    message = _one_line(err)
    assert code == 2 and str(bare) in message
    assert "max_text_len_of_initckpt" in message and "--text-table-len N" in message
    assert not (tmp_path / "m").exists()

    code, out, err = run(capsys, "convert", "official", str(bare), str(tmp_path / "m"), "--text-table-len", "196")
    assert code == 0, err
    assert "max_text_len_of_initckpt 196 (option --text-table-len)" in _one_line(out)
    i, o = load_file(FIXTURE / "inputs.safetensors"), load_file(FIXTURE / "outputs.safetensors")
    with torch.no_grad():
        got = load_model(tmp_path / "m").eval().encode_image(i["image"])
    torch.testing.assert_close(got, o["infer_image_ft.cls_feats"], atol=1e-5, rtol=1e-5)
    with pytest.raises(CheckpointError, match=r"--text-table-len 195 does not fit the relative_position_bias_table"):
        load_official(bare, text_table_len=195)


def test_a_saved_relative_position_index_fixes_the_image_grid(tmp_path, capsys):
    """Without a stored config the table's rows fit several layouts; the official model also saves its
    ``relative_position_index`` buffer ([W*W + 1]^2), whose shape picks the one with image grid W."""
    blob = torch.load(FIXTURE / "checkpoint.pt", weights_only=True)
    grid = 32 // 16  # the fixture model: 32 px images, patch 16
    state = {**blob["state_dict"], "relative_position_index": torch.zeros(grid * grid + 1, grid * grid + 1,
                                                                          dtype=torch.long)}
    bare = tmp_path / "bare-with-index.pt"
    torch.save(state, bare)
    code, out, err = run(capsys, "convert", "official", str(bare), str(tmp_path / "m"))
    assert code == 0, err
    assert "max_text_len_of_initckpt 196 (weights (relative_position_index gives the image grid))" in _one_line(out)
    i, o = load_file(FIXTURE / "inputs.safetensors"), load_file(FIXTURE / "outputs.safetensors")
    with torch.no_grad():
        got = load_model(tmp_path / "m").eval().encode_image(i["image"])
    torch.testing.assert_close(got, o["infer_image_ft.cls_feats"], atol=1e-5, rtol=1e-5)
