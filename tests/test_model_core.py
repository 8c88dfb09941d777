"""MoME model core: routing, position indices, heads, gradients, parameter counts, persistence."""

from __future__ import annotations

import pytest
import torch

from vlmo_cli.errors import ConfigError
from vlmo_cli.model.config import ModelConfig, get_config
from vlmo_cli.factory import load_model, save_model
from vlmo_cli.model.position import (
    image_relative_position_index,
    pair_relative_position_index,
    resize_image_relative_table,
    text_relative_position_index,
)
from vlmo_cli.model.vlmo import VLMo

ALL_HEADS = ["pooler", "itc", "itc_vl", "itm", "mlm", "vqa", "nlvr2", "mim"]


def tiny(**kw) -> VLMo:
    torch.manual_seed(0)
    cfg = get_config("tiny", vocab_size=200, drop_path_rate=0.0, heads=ALL_HEADS, vqa_num_answers=7,
                     num_modality_types=3, **kw)
    model = VLMo(cfg).eval()
    with torch.no_grad():  # non-trivial values everywhere (zeros would hide routing mistakes)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def batch(b=2, t=10, lengths=(4, 10), size=32):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 200, (b, t), generator=g)
    mask = torch.zeros(b, t, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = ids * mask
    return ids, mask, torch.randn(b, 3, size, size, generator=g)


# ---------------------------------------------------------------------- routing
def test_vision_expert_does_not_touch_text_path():
    model = tiny()
    ids, mask, img = batch()
    with torch.no_grad():
        before = model.encode_text(ids, mask)
        for blk in model.transformer.blocks:
            blk.mlp_imag.fc1.weight.mul_(3.0)
            blk.norm2_imag.bias.add_(1.0)
        assert torch.equal(before, model.encode_text(ids, mask))
        assert not torch.allclose(model.forward_image(img).features, model.forward_image(img).features * 0 + 1)


def test_language_expert_does_not_touch_image_path():
    model = tiny()
    _, _, img = batch()
    with torch.no_grad():
        before = model.encode_image(img)
        for blk in model.transformer.blocks:
            blk.mlp_text.fc2.weight.mul_(-2.0)
            if blk.with_vlffn:
                blk.mlp_vl.fc2.weight.mul_(-2.0)
        assert torch.equal(before, model.encode_image(img))


def _block_outputs(model, ids, mask, img):
    outs = []
    hooks = [b.register_forward_hook(lambda m, a, o: outs.append(o)) for b in model.transformer.blocks]
    with torch.no_grad():
        model.forward_pair(ids, mask, img)
    for h in hooks:
        h.remove()
    return outs


def test_pair_path_routes_each_segment_to_its_expert_below_vlffn():
    model = tiny()
    ids, mask, img = batch()
    t = ids.shape[1]
    ref = _block_outputs(model, ids, mask, img)[0]
    with torch.no_grad():
        model.transformer.blocks[0].mlp_imag.fc1.weight.mul_(2.0)
    out = _block_outputs(model, ids, mask, img)[0]
    assert torch.equal(out[:, :t], ref[:, :t])  # text tokens: language expert only
    assert not torch.allclose(out[:, t:], ref[:, t:])  # image tokens: vision expert
    with torch.no_grad():
        model.transformer.blocks[0].mlp_imag.fc1.weight.div_(2.0)
        model.transformer.blocks[0].mlp_text.fc1.weight.mul_(2.0)
    out = _block_outputs(model, ids, mask, img)[0]
    assert torch.equal(out[:, t:], ref[:, t:])
    assert not torch.allclose(out[:, :t], ref[:, :t])


def test_pair_path_uses_only_vl_expert_from_vlffn_start():
    model = tiny()
    ids, mask, img = batch()
    start = model.config.vlffn_start
    with torch.no_grad():
        ref = model.forward_pair(ids, mask, img).pooled
        for blk in model.transformer.blocks[start:]:
            blk.mlp_text.fc1.weight.mul_(5.0)
            blk.mlp_imag.fc1.weight.mul_(5.0)
        assert torch.equal(ref, model.forward_pair(ids, mask, img).pooled)
        model.transformer.blocks[start].mlp_vl.fc1.weight.mul_(2.0)
        assert not torch.allclose(ref, model.forward_pair(ids, mask, img).pooled)


def test_split_follows_real_text_length_not_a_fixed_40():
    model = tiny()
    ids, mask, img = batch(t=7, lengths=(3, 7))
    out = model.forward_pair(ids, mask, img)
    assert out.text_features.shape[1] == 7 and out.image_features.shape[1] == model.config.num_image_tokens


@pytest.mark.parametrize("path", ["pair", "text"])
def test_padding_does_not_change_real_tokens(path):
    model = tiny()
    ids, mask, img = batch(t=6, lengths=(4, 6))
    pad = 5
    ids_p = torch.cat([ids, torch.zeros(2, pad, dtype=ids.dtype)], 1)
    mask_p = torch.cat([mask, torch.zeros(2, pad, dtype=mask.dtype)], 1)
    with torch.no_grad():
        if path == "pair":
            a, b = model.forward_pair(ids, mask, img), model.forward_pair(ids_p, mask_p, img)
            torch.testing.assert_close(a.pooled, b.pooled, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.image_features, b.image_features, atol=1e-5, rtol=1e-5)
            real = mask.bool()
            torch.testing.assert_close(a.text_features[real], b.text_features[:, :6][real], atol=1e-5, rtol=1e-5)
        else:
            torch.testing.assert_close(model.encode_text(ids, mask), model.encode_text(ids_p, mask_p), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- position indices
def test_image_index_hand_computed_grid2():
    idx = image_relative_position_index(2)
    # patches (row, col): 1=(0,0) 2=(0,1) 3=(1,0) 4=(1,1); bucket = (dy+1)*3 + (dx+1) with d = query - key
    expected = torch.tensor(
        [
            [11, 9, 9, 9, 9],
            [10, 4, 3, 1, 0],
            [10, 5, 4, 2, 1],
            [10, 7, 6, 4, 3],
            [10, 8, 7, 5, 4],
        ]
    )
    assert torch.equal(idx, expected)


def test_text_and_pair_index_hand_computed():
    # grid 2: image buckets 0..11; text→image 12; image→text 13; text offset (j-i) at row (j-i)+194+14
    text = text_relative_position_index(4, 2)
    expected = torch.tensor(
        [
            [405, 403, 403, 403],
            [404, 208, 209, 210],
            [404, 207, 208, 209],
            [404, 206, 207, 208],
        ]
    )
    assert torch.equal(text, expected)
    pair = pair_relative_position_index(4, 2)
    assert pair.shape == (9, 9)
    assert (pair[:4, 4:] == 12).all() and (pair[4:, :4] == 13).all()
    assert torch.equal(pair[:4, :4], text) and torch.equal(pair[4:, 4:], image_relative_position_index(2))


def test_table_rows_at_official_resolutions():
    from vlmo_cli.model.position import num_table_rows

    assert [num_table_rows(g) for g in (14, 24, 30)] == [1126, 2606, 3878]


def test_interpolation_is_identity_at_same_resolution_and_keeps_extra_rows():
    table = torch.randn(1126, 144)
    assert torch.equal(resize_image_relative_table(table, 14, 14), table)
    resized = resize_image_relative_table(table, 14, 24)
    assert resized.shape == (2606, 144)
    assert torch.equal(resized[-397:], table[-397:])


def test_relative_bias_uses_layer_major_columns():
    model = tiny()
    ids, mask, img = batch()
    h = model.config.num_heads
    with torch.no_grad():
        ref = model.forward_pair(ids, mask, img).pooled
        model.relative_position_bias_table[:, 3 * h : 4 * h].add_(1.0)  # layer 3's columns: a constant shift
        torch.testing.assert_close(model.forward_pair(ids, mask, img).pooled, ref)  # softmax is shift invariant
        model.relative_position_bias_table[:40, 0:h].add_(torch.randn(40, h))
        assert not torch.allclose(model.forward_pair(ids, mask, img).pooled, ref)


# ---------------------------------------------------------------------- heads and gradients
def test_head_shapes():
    model = tiny()
    ids, mask, img = batch()
    d = model.config.embed_dim
    p = model.forward_pair(ids, mask, img)
    assert p.pooled.shape == (2, d)
    assert model.itm_logits(p.pooled).shape == (2, 2)
    assert model.vqa_logits(p.pooled).shape == (2, 7)
    assert model.mlm_logits(p.text_features).shape == (2, 10, 200)
    assert model.nlvr2_logits(ids, mask, img, img.flip(0)).shape == (2, 2)
    e = model.encode_image(img)
    assert e.shape == (2, d) and torch.allclose(e.norm(dim=-1), torch.ones(2))
    c = model.contrastive_text(ids, mask, vl_branch=True)
    assert c.vl_embedding.shape == (2, d)
    patches = model.config.grid_size**2
    mask_p = torch.zeros(2, patches, dtype=torch.bool)
    mask_p[:, :3] = True
    f = model.forward_image(img, patch_mask=mask_p).features
    assert model.mim_head(f[:, 1:]).shape == (2, patches, 8 * 8 * 3)


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_gradients_reach_exactly_the_expected_parameters():
    model = tiny().train()
    ids, mask, img = batch()
    start = model.config.vlffn_start

    def expert(n):  # (block index, expert family) of an expert parameter, else None
        parts = n.split(".")
        if n.startswith("transformer.blocks.") and parts[3].split("_")[-1] in ("text", "imag", "vl"):
            return int(parts[2]), parts[3].split("_")[-1]
        return None

    def shared(n):
        return expert(n) is None and (
            n.startswith(("transformer.blocks.", "transformer.norm", "token_type_embeddings"))
            or n == "relative_position_bias_table"
        )

    def text_emb(n):
        return n.startswith("text_embeddings.") and "position_embeddings" not in n

    def image_emb(n):
        return n.startswith(("transformer.patch_embed", "transformer.cls_token"))

    def uses(n, family, below=None, top=None):
        e = expert(n)
        return e is not None and e[1] == family and (below is None or e[0] < below) and (top is None or e[0] >= top)

    cases = {
        "text": (model.encode_text(ids, mask).sum(),
                 lambda n: shared(n) or text_emb(n) or uses(n, "text") or n.startswith("itc_text_proj")),
        "image": (model.encode_image(img).sum(),
                  lambda n: shared(n) or image_emb(n) or uses(n, "imag") or n.startswith("itc_image_proj")),
        "pair": (model.forward_pair(ids, mask, img).pooled.sum(),
                 lambda n: shared(n) or text_emb(n) or image_emb(n) or n.startswith("pooler")
                 or uses(n, "text", below=start) or uses(n, "imag", below=start) or uses(n, "vl")),
        "text VL branch": (model.contrastive_text(ids, mask, vl_branch=True).vl_embedding.sum(),
                           lambda n: shared(n) or text_emb(n) or uses(n, "text", below=start) or uses(n, "vl")
                           or n.startswith("itc_vl_text_proj")),
    }
    for name, (loss, keep) in cases.items():
        got = _grads(model, loss)
        expected = {n for n, p in model.named_parameters() if p.requires_grad and keep(n)}
        assert got == expected, f"{name}: unexpected {got - expected}, missing {expected - got}"


# ---------------------------------------------------------------------- sizes, config, persistence
@pytest.mark.parametrize(
    "size,backbone,stage3",
    [("base", 176_021_088, 202_445_470), ("base_plus", 166_863_840, 184_980_734), ("large", 562_594_048, 599_127_102)],
)
def test_parameter_counts_equal_official(size, backbone, stage3):
    with torch.device("meta"):
        bare = VLMo(get_config(size, heads=["pooler"]))
        full = VLMo(get_config(size))
    assert sum(p.numel() for p in bare.parameters()) == backbone
    assert sum(p.numel() for p in full.parameters()) == stage3


def test_registered_sizes():
    assert get_config("base_plus").layer_scale_init is None and not get_config("base_plus").relative_position
    assert (get_config("large").depth, get_config("large").vlffn_start, get_config("large").num_heads) == (24, 21, 16)
    with pytest.raises(ConfigError, match="allowed"):
        get_config("huge")
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(embed_dim=100, num_heads=12)


def test_save_load_round_trip_is_exact(tmp_path):
    model = tiny()
    ids, mask, img = batch()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(model.forward_pair(ids, mask, img).pooled, loaded.forward_pair(ids, mask, img).pooled)
    assert not any(p.name.startswith(".m.tmp") for p in tmp_path.iterdir())


def test_absolute_position_variant_runs_and_rejects_wrong_image_size():
    model = tiny(relative_position=False, layer_scale_init=None)
    ids, mask, img = batch()
    assert model.relative_position_bias_table is None
    assert model.forward_pair(ids, mask, img).pooled.shape == (2, 128)
    with pytest.raises(ValueError, match="built for 32x32"):
        model.encode_image(torch.randn(1, 3, 48, 48))


def test_grad_checkpointing_gives_same_gradients():
    ids, mask, img = batch()
    grads = []
    for ckpt in (False, True):
        model = tiny().train()
        model.set_grad_checkpointing(ckpt)
        model.forward_pair(ids, mask, img).pooled.sum().backward()
        grads.append(model.transformer.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
