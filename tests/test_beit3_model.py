"""The BEiT-3 module: named sizes, config files, the three paths, padding, the vision mask token, initialisation and
the task heads' shapes."""

from __future__ import annotations

import math

import pytest
import torch

from vlmo_cli.errors import ConfigError
from vlmo_cli.model.beit3 import Beit3, resize_vision_positions
from vlmo_cli.model.beit3_config import Beit3Config, beit3_sizes, get_beit3_config

HEADS = ["vqa", "nlvr2", "retrieval", "classify", "captioning"]


def _tiny(**overrides) -> Beit3:
    torch.manual_seed(0)
    cfg = get_beit3_config("tiny", embed_dim=32, num_heads=4, ffn_dim=64, depth=2, vocab_size=100,
                           max_source_positions=20, **overrides)
    return Beit3(cfg).eval()


def _inputs(batch: int = 2, length: int = 6):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (batch, length), generator=g)
    pad = torch.zeros(batch, length, dtype=torch.long)
    pad[-1, length // 2:] = 1
    return torch.randn(batch, 3, 32, 32, generator=g), ids, pad


def test_named_sizes():
    """base and large are unilm's _get_base_config / _get_large_config; every size has the released vocabulary."""
    assert beit3_sizes() == ["tiny", "base", "large"]
    base, large = get_beit3_config("base"), get_beit3_config("large")
    assert (base.embed_dim, base.depth, base.num_heads, base.ffn_dim) == (768, 12, 12, 3072)
    assert (large.embed_dim, large.depth, large.num_heads, large.ffn_dim) == (1024, 24, 16, 4096)
    for cfg in (base, large):
        assert (cfg.image_size, cfg.patch_size, cfg.vocab_size, cfg.max_source_positions) == (224, 16, 64010, 1024)
        assert cfg.layer_norm_eps == 1e-5 and cfg.normalize_output and cfg.num_image_tokens == 197
    with torch.device("meta"):
        assert sum(p.numel() for p in Beit3(base).parameters()) == 220_987_392  # = torchscale BEiT3, unilm config
        assert sum(p.numel() for p in Beit3(large).parameters()) == 672_702_464
    # the unilm README's "#params" of the released fine-tuned models, in millions (size, resolution, heads, final norm)
    released = [("base", 384, "retrieval", True, 222), ("large", 384, "retrieval", True, 675),
                ("base", 480, "vqa", False, 228), ("large", 480, "vqa", False, 683),
                ("base", 224, "nlvr2", True, 226), ("large", 224, "nlvr2", True, 681),
                ("base", 480, "captioning", True, 271), ("large", 480, "captioning", True, 739)]
    for size, resolution, head, norm, millions in released:
        cfg = get_beit3_config(size, image_size=resolution, heads=[head], normalize_output=norm)
        with torch.device("meta"):
            n = sum(p.numel() for p in Beit3(cfg).parameters())
        assert round(n / 1e6) == millions, (size, head, n)
    with pytest.raises(ConfigError, match="unknown BEiT-3 size 'huge'"):
        get_beit3_config("huge")


def test_config_validation_and_round_trip(tmp_path):
    cfg = get_beit3_config("tiny", heads=["vqa"], vqa_num_answers=9)
    cfg.save(tmp_path / "config.json")
    assert Beit3Config.load(tmp_path / "config.json") == cfg
    with pytest.raises(ConfigError, match="not divisible"):
        get_beit3_config("tiny", num_heads=3)
    with pytest.raises(ConfigError, match="unknown heads"):
        get_beit3_config("tiny", heads=["itm"])
    (tmp_path / "bad.json").write_text('{"family": "beit3", "depht": 3}')
    with pytest.raises(ConfigError, match="unknown BEiT-3 config keys \\['depht'\\]"):
        Beit3Config.load(tmp_path / "bad.json")
    (tmp_path / "typed.json").write_text('{"depth": "12", "normalize_output": "yes", "heads": "vqa"}')
    with pytest.raises(ConfigError, match="field 'depth' must be an integer, got '12'; field 'normalize_output' must "
                                          "be true or false, got 'yes'; field 'heads' must be a list of strings"):
        Beit3Config.load(tmp_path / "typed.json")
    (tmp_path / "vlmo.json").write_text('{"family": "vlmo"}')
    with pytest.raises(ConfigError, match="not a BEiT-3 config"):
        Beit3Config.load(tmp_path / "vlmo.json")


def test_paths_shapes_and_split():
    model = _tiny()
    image, ids, pad = _inputs()
    with torch.no_grad():
        img, txt, pair = model.encode_image(image), model.encode_text(ids, pad), model.encode_pair(image, ids, pad)
    assert img.features.shape == (2, 17, 32) and img.split_position == 17 and img.text_cls is None
    assert txt.features.shape == (2, 6, 32) and txt.split_position == 0 and txt.image_cls is None
    assert pair.features.shape == (2, 23, 32) and pair.split_position == 17
    assert pair.image_features.shape == (2, 17, 32) and pair.text_features.shape == (2, 6, 32)
    assert pair.padding_mask[:, :17].sum() == 0 and torch.equal(pair.padding_mask[:, 17:], pad.bool())
    with pytest.raises(ValueError, match="an image, a text or both"):
        model()


def test_experts_are_routed_by_modality():
    """Changing a text expert leaves the image path unchanged and changes the text part of a pair."""
    model = _tiny()
    image, ids, pad = _inputs()
    with torch.no_grad():
        before_img, before_pair = model.encode_image(image).features, model.encode_pair(image, ids, pad).features
        model.encoder.layers[1].ffn.B.fc2.bias.add_(torch.randn(32))  # not a constant: the final LayerNorm removes one
        after_img, after_pair = model.encode_image(image).features, model.encode_pair(image, ids, pad).features
    assert torch.equal(before_img, after_img)
    assert (after_pair[:, 17:] - before_pair[:, 17:]).abs().max() > 1e-3


def test_padding_does_not_leak():
    """Real tokens' outputs do not depend on what the padding positions hold."""
    model = _tiny()
    image, ids, pad = _inputs()
    other = ids.clone()
    other[pad.bool()] = (other[pad.bool()] + 7) % 100
    with torch.no_grad():
        a, b = model.encode_pair(image, ids, pad).features, model.encode_pair(image, other, pad).features
        ta, tb = model.encode_text(ids, pad).features, model.encode_text(other, pad).features
    real = torch.cat([torch.ones(2, 17, dtype=torch.bool), ~pad.bool()], 1)
    assert torch.allclose(a[real], b[real], atol=1e-6)
    assert torch.allclose(ta[~pad.bool()], tb[~pad.bool()], atol=1e-6)


def test_vision_mask_token():
    """Masked patches take the mask token: their content no longer matters; an all-false mask changes nothing."""
    model = _tiny()
    with torch.no_grad():
        model.vision_embed.mask_token.normal_()
    image = _inputs()[0]
    masked = torch.zeros(2, 16, dtype=torch.bool)
    masked[:, ::3] = True
    noisy = image.clone()
    noisy[:, :, :8, :8] += 5.0  # patch 0, which is masked
    with torch.no_grad():
        a, b = model.encode_image(image, masked).features, model.encode_image(noisy, masked).features
        plain, none = model.encode_image(image).features, model.encode_image(image, torch.zeros_like(masked)).features
    assert torch.allclose(a, b, atol=1e-6) and torch.equal(plain, none)
    assert (a - plain).abs().max() > 1e-3


def test_torchscale_initialisation():
    """Sub-LN scaling: fc1/fc2/out_proj/v_proj (both experts) are PyTorch's default draws times sqrt(log(2·depth));
    q_proj/k_proj are not; text embedding std = width^-0.5; CLS and mask tokens start at zero."""
    torch.manual_seed(0)
    cfg = get_beit3_config("tiny", depth=6, vocab_size=2000)
    model = Beit3(cfg)
    scale = math.sqrt(math.log(2 * cfg.depth))
    bound = 1 / math.sqrt(cfg.embed_dim)  # kaiming_uniform(a=sqrt(5)) of a Linear with fan_in = width
    layer = model.encoder.layers[0]
    for w in (layer.self_attn.v_proj.A.weight, layer.self_attn.out_proj.B.weight, layer.ffn.A.fc1.weight):
        assert bound * scale * 0.97 < w.abs().max() <= bound * scale
    for w in (layer.self_attn.q_proj.A.weight, layer.self_attn.k_proj.B.weight):
        assert bound * 0.97 < w.abs().max() <= bound
    assert abs(model.text_embed.weight.std().item() - cfg.embed_dim**-0.5) < 0.05 * cfg.embed_dim**-0.5
    assert not model.vision_embed.cls_token.any() and not model.vision_embed.mask_token.any()
    assert torch.equal(layer.self_attn.inner_attn_ln.A.weight, torch.ones(cfg.embed_dim))


def test_unilm_initialisation():
    """``init="unilm"``: linear weights within ±0.02 with std near 0.02 / 1.7 (N(0, 0.02²) truncated at ±1 std), zero
    biases."""
    torch.manual_seed(0)
    model = Beit3(get_beit3_config("tiny", init="unilm", vocab_size=100))
    w = model.encoder.layers[0].ffn.B.fc1.weight
    assert w.abs().max() <= 0.02 and 0.009 < w.std() < 0.013
    assert not model.encoder.layers[0].ffn.B.fc1.bias.any()


def test_heads_shapes_and_init():
    model = _tiny(heads=HEADS, vqa_num_answers=11, num_classes=5)
    image, ids, pad = _inputs(3)
    with torch.no_grad():
        assert model.vqa_logits(image, ids, pad).shape == (3, 11)
        assert model.nlvr2_logits(image, image.flip(0), ids, pad).shape == (3, 2)
        assert model.classify_logits(image).shape == (3, 5)
        img, txt = model.retrieval_embeddings(image, ids, pad)
        assert model.captioning_logits(image, ids, pad).shape == (3, 6, 100)
        assert model.captioning_logits(image, ids, pad, masked_position=pad).shape == (int(pad.sum()), 100)
    assert img.shape == txt.shape == (3, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3)) and torch.allclose(txt.norm(dim=-1), torch.ones(3))
    assert model.retrieval_head.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert model.nlvr2_head.dense2.weight.abs().max() <= 0.02 * 0.001
    assert model.classify_head.head.weight.abs().max() <= 0.02 * 0.001
    assert model.vqa_head.head[3].weight.abs().max() <= 0.02 and model.vqa_head.head[3].weight.std() > 0.005
    with pytest.raises(ValueError, match="no 'vqa' head"):
        _tiny().vqa_logits(image, ids, pad)


def test_nlvr2_uses_both_pairs():
    """Swapping the two images changes the NLVR2 input order ([pair a, pair b]) and so the logits."""
    model = _tiny(heads=["nlvr2"])
    with torch.no_grad():
        model.nlvr2_head.dense1.weight.normal_()
        model.nlvr2_head.dense2.weight.normal_()
    image, ids, pad = _inputs()
    other = torch.randn_like(image)
    with torch.no_grad():
        a, b = model.nlvr2_logits(image, other, ids, pad), model.nlvr2_logits(other, image, ids, pad)
    assert not torch.allclose(a, b)


def test_resize_vision_positions():
    table = torch.randn(3 + 16, 8)
    out = resize_vision_positions(table, 6)
    assert out.shape == (3 + 36, 8) and torch.equal(out[:3], table[:3])
    assert torch.equal(resize_vision_positions(table, 4), table)
    with pytest.raises(ValueError, match="square grid"):
        resize_vision_positions(torch.randn(3 + 15, 8), 4)


def test_text_longer_than_the_position_table():
    model = _tiny()  # 20 text positions: 18 tokens at most
    with pytest.raises(ValueError, match="a sequence of 19 tokens exceeds this position table"):
        model.encode_text(torch.zeros(1, 19, dtype=torch.long))
    assert model.encode_text(torch.zeros(1, 18, dtype=torch.long)).features.shape == (1, 18, 32)


def test_drop_path_only_in_training():
    """Stochastic depth (linear to drop_path_rate at the last block) draws in training and is off in eval."""
    model = _tiny(drop_path_rate=0.5)
    assert [round(layer.drop_path.drop_prob, 3) for layer in model.encoder.layers[1:]] == [0.5]
    assert isinstance(model.encoder.layers[0].drop_path, torch.nn.Identity)
    image = _inputs()[0]
    with torch.no_grad():
        assert torch.equal(model.encode_image(image).features, model.encode_image(image).features)
        model.train()
        torch.manual_seed(0)
        runs = [model.encode_image(image).features for _ in range(4)]
    assert any(not torch.equal(runs[0], r) for r in runs[1:])


def test_captioning_mask_is_causal_over_text():
    """Under the captioning mask a text position depends on the image and earlier text only; image tokens on the
    image only."""
    from vlmo_cli.model.beit3_heads import captioning_mask

    mask = captioning_mask(2, 3)
    assert mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]]
    model = _tiny(heads=["captioning"])
    image, ids, _ = _inputs()
    later = ids.clone()
    later[:, 4:] = (later[:, 4:] + 1) % 100
    with torch.no_grad():
        a, b = model.captioning_logits(image, ids), model.captioning_logits(image, later)
        img_a = model(ids, image, attn_mask=captioning_mask(17, 6)).image_features
        img_b = model(later, image, attn_mask=captioning_mask(17, 6)).image_features
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6) and (a[:, 4:] - b[:, 4:]).abs().max() > 1e-4
    assert torch.allclose(img_a, img_b, atol=1e-6)
