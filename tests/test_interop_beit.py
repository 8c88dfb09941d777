"""BEiT import: a tiny random timm BEiT converted into VLMo must give the same image features as timm itself."""

from __future__ import annotations

import argparse

import pytest
import torch

from vlmo_cli.errors import CheckpointError
from vlmo_cli.interop.beit import convert_beit
from vlmo_cli.model.config import get_config

timm_beit = pytest.importorskip("timm.models.beit")

WIDTH, DEPTH, HEADS = 64, 2, 4


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Overwrite every parameter (γ, tables, norms included) so that no mapping passes by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif "gamma" in name:
                p.copy_(0.05 + 0.15 * torch.rand(p.shape, generator=g))
            elif "relative_position_bias_table" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def _timm_beit(pool: str = "token", per_layer: bool = True, shared: bool = False) -> torch.nn.Module:
    model = timm_beit.Beit(
        img_size=32, patch_size=8, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=5,
        use_abs_pos_emb=False, use_rel_pos_bias=per_layer, use_shared_rel_pos_bias=shared, init_values=0.1,
        global_pool=pool,
    ).eval()
    _randomise(model)
    return model


def _cfg(**overrides):
    return get_config("tiny", embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, vlffn_start=1, **overrides)


def _timm_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Token features after BEiT's final norm: ``norm`` inside forward_features, or ``fc_norm`` (per token)."""
    with torch.no_grad():
        return model.fc_norm(model.forward_features(x))


def _vlmo_features(vlmo, x: torch.Tensor) -> torch.Tensor:
    # BEiT has no modality embedding: zero VLMo's image row so the two computations coincide
    with torch.no_grad():
        vlmo.token_type_embeddings.weight[1].zero_()
        return vlmo.eval().forward_image(x).features


@pytest.mark.parametrize(
    "pool,per_layer,shared",
    [("token", True, False), ("avg", True, False), ("token", False, True), ("avg", True, True)],
    ids=["per-layer+norm", "per-layer+fc_norm", "shared-table", "both-tables"],
)
def test_timm_beit_image_features_match(pool, per_layer, shared):
    beit = _timm_beit(pool, per_layer, shared)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    vlmo = convert_beit(beit.state_dict(), _cfg())
    ref = _timm_features(beit, x)
    out = _vlmo_features(vlmo, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # the relative-position rows matter: without them the features differ visibly
    with torch.no_grad():
        vlmo.relative_position_bias_table.zero_()
    assert (_vlmo_features(vlmo, x) - ref).abs().max() > 1e-2


def test_table_layout_is_layer_major_image_rows_only():
    beit = _timm_beit()
    cfg = _cfg()
    table = convert_beit(beit.state_dict(), cfg).relative_position_bias_table.detach()
    rows = (2 * cfg.grid_size - 1) ** 2 + 3
    for layer in range(DEPTH):
        src = beit.state_dict()[f"blocks.{layer}.attn.relative_position_bias_table"]
        torch.testing.assert_close(table[:rows, layer * HEADS : (layer + 1) * HEADS], src)
    assert not table[rows:].any(), "text and cross-modal rows must stay zero"


def test_unilm_file_format(tmp_path):
    """unilm files: a ``model`` container with persistent index buffers, classifier head and ``args``."""
    beit = _timm_beit(pool="avg")
    state = dict(beit.state_dict())
    for i in range(DEPTH):
        state[f"blocks.{i}.attn.relative_position_index"] = beit.blocks[i].attn.relative_position_index.clone()
    path = tmp_path / "beit_unilm.pth"
    torch.save({"model": state, "args": argparse.Namespace(model="beit_base"), "epoch": 3}, path)
    x = torch.randn(2, 3, 32, 32)
    vlmo = convert_beit(path, _cfg())
    torch.testing.assert_close(_vlmo_features(vlmo, x), _timm_features(beit, x), atol=1e-5, rtol=0)


def test_unilm_mim_checkpoint_with_shared_table(tmp_path):
    """MIM pre-training checkpoints: shared table, ``mask_token`` and ``lm_head`` (dropped), ``norm`` kept."""
    beit = _timm_beit(per_layer=False, shared=True)
    state = {k: v for k, v in beit.state_dict().items() if not k.startswith("head.")}
    state["mask_token"] = torch.randn(1, 1, WIDTH)
    state["lm_head.weight"] = torch.randn(8192, WIDTH)
    state["lm_head.bias"] = torch.randn(8192)
    state["rel_pos_bias.relative_position_index"] = beit.rel_pos_bias.relative_position_index.clone()
    path = tmp_path / "beit_mim.pth"
    torch.save({"module": {f"module.{k}": v for k, v in state.items()}}, path)
    x = torch.randn(2, 3, 32, 32)
    vlmo = convert_beit(path, _cfg())
    torch.testing.assert_close(_vlmo_features(vlmo, x), _timm_features(beit, x), atol=1e-5, rtol=0)
    table = vlmo.relative_position_bias_table.detach()
    shared = state["rel_pos_bias.relative_position_bias_table"]
    for layer in range(DEPTH):
        torch.testing.assert_close(table[: shared.shape[0], layer * HEADS : (layer + 1) * HEADS], shared)


def test_expert_initialisation_options():
    state = _timm_beit().state_dict()
    copied = convert_beit(state, _cfg(), init_text="image", init_vl="image")
    rand = convert_beit(state, _cfg(), init_text="random", init_vl="random")
    for i, block in enumerate(copied.transformer.blocks):
        torch.testing.assert_close(block.mlp_text.fc1.weight, block.mlp_imag.fc1.weight)
        torch.testing.assert_close(block.norm2_text.weight, state[f"blocks.{i}.norm2.weight"])
        if block.with_vlffn:
            torch.testing.assert_close(block.mlp_vl.fc2.weight, state[f"blocks.{i}.mlp.fc2.weight"])
    assert not torch.equal(rand.transformer.blocks[0].mlp_text.fc1.weight, state["blocks.0.mlp.fc1.weight"])


def test_official_norm_mode_leaves_norm_at_init():
    state = _timm_beit(pool="avg").state_dict()  # fine-tuned style: Identity norm, fc_norm present
    official = convert_beit(state, _cfg(), final_norm="official")
    assert torch.equal(official.transformer.norm.weight, torch.ones(WIDTH))
    auto = convert_beit(state, _cfg())
    torch.testing.assert_close(auto.transformer.norm.weight, state["fc_norm.weight"])


def test_higher_resolution_resizes_table_and_runs():
    vlmo = convert_beit(_timm_beit().state_dict(), _cfg(image_size=64))
    out = vlmo.eval().forward_image(torch.randn(1, 3, 64, 64)).features
    assert out.shape == (1, 65, WIDTH) and torch.isfinite(out).all()


def test_wrong_size_is_one_clear_error():
    state = _timm_beit().state_dict()
    pattern = r"do not fit model size 'tiny'.*width 64 \(config: 128\).*depth 2 \(config: 4\)"
    with pytest.raises(CheckpointError, match=pattern):
        convert_beit(state, get_config("tiny"))


def test_unexpected_and_missing_keys_are_named():
    state = dict(_timm_beit().state_dict())
    state["blocks.0.attn.extra_bias"] = torch.zeros(3)
    del state["blocks.1.mlp.fc2.bias"]
    pattern = r"missing keys \[blocks\.1\.mlp\.fc2\.bias\].*unexpected keys \[blocks\.0\.attn\.extra_bias\]"
    with pytest.raises(CheckpointError, match=pattern):
        convert_beit(state, _cfg())


def test_vlmo_checkpoint_is_recognised():
    with pytest.raises(CheckpointError, match="vlmo convert official"):
        convert_beit({"transformer.blocks.0.attn.qkv.weight": torch.zeros(1)}, _cfg())


def test_cli_convert_beit(tmp_path):
    from vlmo_cli.cli.app import main
    from vlmo_cli.factory import load_model

    tiny = get_config("tiny")
    beit = timm_beit.Beit(
        img_size=32, patch_size=8, embed_dim=tiny.embed_dim, depth=tiny.depth, num_heads=tiny.num_heads,
        num_classes=0, use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1, global_pool="token",
    )
    _randomise(beit)
    path = tmp_path / "beit.pth"
    torch.save(beit.state_dict(), path)
    with pytest.raises(SystemExit) as exc:  # weights of width 128 are not a "base" model
        main(["convert", "beit", str(path), str(tmp_path / "bad"), "--size", "base"])
    assert exc.value.code == 2
    main(["convert", "beit", str(path), str(tmp_path / "out"), "--size", "tiny", "--init-text-from", "image"])
    model = load_model(tmp_path / "out")
    block = model.transformer.blocks[0]
    torch.testing.assert_close(block.mlp_imag.fc1.weight, beit.state_dict()["blocks.0.mlp.fc1.weight"])
    torch.testing.assert_close(block.mlp_text.fc1.weight, block.mlp_imag.fc1.weight)


def test_absolute_position_beit_into_base_plus_style_model():
    """BEiT with absolute positions and no layer scale → the absolute-position (base_plus-style) variant."""
    beit = timm_beit.Beit(
        img_size=32, patch_size=8, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=0,
        use_abs_pos_emb=True, use_rel_pos_bias=False, init_values=None, global_pool="token",
    ).eval()
    _randomise(beit)
    with torch.no_grad():
        beit.pos_embed.normal_(0, 0.3)
    x = torch.randn(2, 3, 32, 32)
    vlmo = convert_beit(beit.state_dict(), _cfg(relative_position=False, layer_scale_init=None))
    torch.testing.assert_close(_vlmo_features(vlmo, x), _timm_features(beit, x), atol=1e-5, rtol=0)
    with pytest.raises(CheckpointError, match="absolute position embeddings present"):
        convert_beit(beit.state_dict(), _cfg())


def _summary_of(directory) -> str:
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        return f.metadata()["inferred"]


def test_absolute_position_beit_heads_come_from_what_the_caller_chose(tmp_path):
    """Without a relative table no shape holds the head count: the conversion says it came from the caller."""
    from vlmo_cli.factory import convert_beit_to_dir
    from vlmo_cli.factory import load_model

    beit = timm_beit.Beit(
        img_size=32, patch_size=8, embed_dim=WIDTH, depth=DEPTH, num_heads=8, num_classes=0,
        use_abs_pos_emb=True, use_rel_pos_bias=False, init_values=None, global_pool="token",
    ).eval()
    _randomise(beit)
    path = tmp_path / "beit_abs.pth"
    torch.save(beit.state_dict(), path)
    cfg = get_config("tiny", embed_dim=WIDTH, depth=DEPTH, num_heads=8, vlffn_start=1, relative_position=False,
                     layer_scale_init=None)
    out = convert_beit_to_dir(path, tmp_path / "m", cfg, config_by="option --size tiny",
                              heads_by="option --num-heads")
    summary = _summary_of(out)
    assert "num_heads 8 (option --num-heads; no relative-position table fixes it)" in summary
    assert "vocab_size 30522, max_text_len 40, max_text_len_of_initckpt 196 (option --size tiny)" in summary
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_vlmo_features(load_model(out), x), _timm_features(beit, x), atol=1e-5, rtol=0)
    # the size's own head count (4) would import the same tensors and compute other features
    other = convert_beit(beit.state_dict(), cfg.replace(num_heads=4))
    assert (_vlmo_features(other, x) - _timm_features(beit, x)).abs().max() > 1e-2


def test_cli_beit_summary_and_contradicting_heads(tmp_path, capsys):
    from helpers import run

    tiny = get_config("tiny")
    beit = timm_beit.Beit(
        img_size=32, patch_size=8, embed_dim=tiny.embed_dim, depth=tiny.depth, num_heads=tiny.num_heads,
        num_classes=0, use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1, global_pool="token",
    )
    path = tmp_path / "beit.pth"
    torch.save(beit.state_dict(), path)
    code, out, err = run(capsys, "convert", "beit", str(path), str(tmp_path / "m"), "--size", "tiny")
    assert code == 0, err
    assert "architecture: num_heads 4 (weights)" in " ".join(out.split())
    code, _, err = run(capsys, "convert", "beit", str(path), str(tmp_path / "n"), "--size", "tiny", "--num-heads", "2")
    assert code == 2 and "heads 4 (config: 2)" in " ".join(err.split())
    assert not (tmp_path / "n").exists()
