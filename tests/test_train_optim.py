"""Optimizer parameter groups (fixed vs the official name-matching bug), head lr multiplier and schedules."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from vlmo_cli.model.config import get_config
from vlmo_cli.model.vlmo import VLMo
from vlmo_cli.train.optim import adamw_groups, build_optimizer, lr_factor, set_lr, warmup_steps


@pytest.fixture(scope="module")
def model() -> VLMo:
    with torch.device("meta"):
        return VLMo(get_config("tiny", vocab_size=64, heads=["pooler", "itc", "itc_vl", "itm", "mlm", "vqa"],
                               vqa_num_answers=5))


def decay_of(groups) -> dict[str, bool]:
    return {name: g["weight_decay"] > 0 for g in groups for name in g["names"]}


def test_fixed_groups_exclude_1d_embeddings_positions_and_scales(model):
    decay = decay_of(adamw_groups(model, 1e-4, 0.01))
    for name in ("transformer.blocks.0.norm2_text.weight", "transformer.blocks.0.gamma_1", "transformer.cls_token",
                 "token_type_embeddings.weight", "logit_scale", "logit_vl_scale", "relative_position_bias_table",
                 "text_embeddings.word_embeddings.weight", "transformer.blocks.0.attn.q_bias", "vqa_classifier.1.weight"):
        assert decay[name] is False, name
    for name in ("transformer.blocks.0.attn.qkv.weight", "transformer.blocks.0.mlp_imag.fc1.weight",
                 "itc_text_proj.fc.weight", "mlm_score.decoder.weight", "transformer.patch_embed.proj.weight"):
        assert decay[name] is True, name
    assert "text_embeddings.position_embeddings.weight" not in decay  # frozen in the relative-position variant


def test_compat_groups_reproduce_the_official_name_matching(model):
    decay = decay_of(adamw_groups(model, 1e-4, 0.01, mode="compat"))
    # decayed by the official substring list although they should not be (reference §15.1)
    for name in ("transformer.blocks.0.norm2_text.weight", "transformer.blocks.0.gamma_1", "transformer.cls_token",
                 "token_type_embeddings.weight", "logit_scale", "vqa_classifier.1.weight"):
        assert decay[name] is True, name
    for name in ("transformer.blocks.0.norm1.weight", "transformer.norm.weight", "relative_position_bias_table",
                 "transformer.blocks.0.attn.q_bias", "text_embeddings.LayerNorm.weight", "mlm_score.bias"):
        assert decay[name] is False, name


def test_head_lr_multiplier_applies_to_task_heads_only(model):
    cfg = SimpleNamespace(lr=1e-4, weight_decay=0.01, lr_mult_heads=20.0, no_decay="fixed", betas=(0.9, 0.98), eps=1e-8,
                          layer_decay=1.0)
    opt = build_optimizer(model, cfg)
    for group in opt.param_groups:
        heads = all(n.startswith("vqa_classifier") for n in group["names"])
        assert group["lr"] == pytest.approx(2e-3 if heads else 1e-4)
    set_lr(opt, 1e-4, 0.5)
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([5e-5, 1e-3])
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-8


def test_layer_decay_scales_by_depth_as_unilm_beit3():
    """``layer_decay`` < 1: block i at ``decay ** (depth - i)``, embeddings at ``decay ** (depth + 1)``, the rest
    (final norm, heads) at 1; the head multiplier stacks on top (unilm beit3/optim_factory.py)."""
    from vlmo_cli.model.beit3 import Beit3
    from vlmo_cli.model.beit3_config import get_beit3_config

    net = Beit3(get_beit3_config("tiny", heads=["vqa"], vocab_size=50, vqa_num_answers=3))  # depth 4
    groups = adamw_groups(net, 1.0, 0.01, lr_mult_heads=20.0, layer_decay=0.5)
    scale = {name: g["lr_scale"] for g in groups for name in g["names"]}
    assert scale["text_embed.weight"] == scale["encoder.embed_positions.B.weight"] == pytest.approx(0.5 ** 5)
    assert scale["vision_embed.cls_token"] == pytest.approx(0.5 ** 5)
    assert scale["encoder.layers.0.ffn.A.fc1.weight"] == pytest.approx(0.5 ** 4)
    assert scale["encoder.layers.3.self_attn.q_proj.B.weight"] == pytest.approx(0.5)
    assert scale["vqa_head.pooler.dense.weight"] == 1.0 and scale["vqa_head.head.0.weight"] == 20.0
    decay = decay_of(groups)
    assert not decay["vision_embed.cls_token"] and not decay["encoder.embed_positions.A.weight"]
    assert decay["text_embed.weight"] and decay["encoder.layers.0.ffn.A.fc1.weight"]
    assert {g["lr_scale"] for g in adamw_groups(net, 1.0, 0.01)} == {1.0}  # off by default


def test_schedules():
    assert warmup_steps(0.1, 1000) == 100 and warmup_steps(300, 3000) == 300
    assert lr_factor(0, 1000, 100) == 0 and lr_factor(50, 1000, 100) == 0.5 and lr_factor(100, 1000, 100) == 1
    assert lr_factor(550, 1000, 100) == pytest.approx(0.5) and lr_factor(1000, 1000, 100) == 0
    assert lr_factor(550, 1000, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(325, 1000, 100, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_factor(1000, 1000, 100, end_factor=0.1) == pytest.approx(0.1)


def test_batches_are_truncated_to_the_smallest_process_batch():
    from vlmo_cli.train.loop import batch_rows, truncate_batch

    batch = {"pixel_values": torch.zeros(5, 3, 4, 4), "input_ids": torch.arange(10).view(5, 2), "scale": torch.tensor(1.0)}
    assert batch_rows(batch) == 5 and truncate_batch(batch, 5) is batch
    cut = truncate_batch(batch, 3)
    assert cut["pixel_values"].shape[0] == 3 and torch.equal(cut["input_ids"], torch.arange(6).view(3, 2))
    assert cut["scale"] is batch["scale"]
