"""The converted official checkpoint reproduces every output of the official implementation (fixture, fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmo_cli.factory import convert_official, load_model, load_official
from vlmo_cli.model.position import (
    image_relative_position_index,
    pair_relative_position_index,
    text_relative_position_index,
)
from vlmo_cli.objectives.classification import classification_loss, mlm_loss, vqa_loss
from vlmo_cli.objectives.contrastive import contrastive_loss
from vlmo_cli.objectives.matching import itm_loss, sample_hard_negatives

#: the official golden data, kept in the repository (tests/fixtures/official-vlmo-tiny-relpos/README.md describes it)
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "official-vlmo-tiny-relpos"
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    out = tmp_path_factory.mktemp("official") / "model"
    convert_official(FIXTURE / "checkpoint.pt", out)
    model = load_model(out).eval()
    return model, load_file(FIXTURE / "inputs.safetensors"), load_file(FIXTURE / "outputs.safetensors")


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, **TOL)


def test_index_builders_match_official():
    o = load_file(FIXTURE / "outputs.safetensors")
    assert torch.equal(image_relative_position_index(2), o["index.relative_position_index"])
    assert torch.equal(text_relative_position_index(40, 2), o["index.text_relative_position_index"])
    assert torch.equal(pair_relative_position_index(40, 2), o["index.text_imag_relative_position_index"])


def test_inferred_architecture(fx):
    cfg = fx[0].config
    assert (cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.vlffn_start) == (4, 64, 4, 2)
    assert (cfg.image_size, cfg.patch_size, cfg.vocab_size, cfg.vqa_num_answers) == (32, 16, 1000, 10)
    assert cfg.relative_position and cfg.num_modality_types == 3 and cfg.layer_scale_init is not None
    assert set(cfg.heads) == {"pooler", "itc", "itc_vl", "itm", "mlm", "vqa", "nlvr2"}


@torch.no_grad()
def test_embeddings_and_blocks(fx):
    model, i, o = fx
    close(model.text_embeddings(i["text_ids"]), o["infer.text_embeddings_out"])
    close(model.transformer.patch_embed(i["image"]), o["infer.patch_embed_out"])
    outs = []
    hooks = [b.register_forward_hook(lambda m, a, out: outs.append(out)) for b in model.transformer.blocks]
    model.forward_pair(i["text_ids"], i["text_masks"], i["image"])
    for h in hooks:
        h.remove()
    for k, out in enumerate(outs):
        close(out, o[f"infer.block_out.{k}"])


@torch.no_grad()
def test_fusion_path(fx):
    model, i, o = fx
    p = model.forward_pair(i["text_ids"], i["text_masks"], i["image"])
    close(p.pooled, o["infer.cls_feats"])
    close(p.raw_cls, o["infer.raw_cls_feats"])
    close(p.text_features, o["infer.text_feats"])
    close(p.image_features, o["infer.image_feats"])
    m = model.forward_pair(i["text_ids_mlm"], i["text_masks"], i["image"])
    close(m.pooled, o["infer_mlm.cls_feats"])
    close(m.text_features, o["infer_mlm.text_feats"])


@torch.no_grad()
def test_unimodal_and_vl_branch_paths(fx):
    model, i, o = fx
    t = model.contrastive_text(i["text_ids"], i["text_masks"], vl_branch=True)
    close(t.embedding, o["infer_text.cls_feats"])
    close(t.vl_embedding, o["infer_text.cls_vlffn_feats"])
    close(t.features, o["infer_text.text_feats"])
    close(model.forward_text(i["text_ids"], i["text_masks"]).raw_cls, o["infer_text.raw_cls_feats"])
    v = model.contrastive_image(i["image"], vl_branch=True)
    close(v.embedding, o["infer_image.cls_feats"])
    close(v.vl_embedding, o["infer_image.cls_vlffn_feats"])
    close(v.features, o["infer_image.image_feats"])
    close(model.forward_image(i["image"]).raw_cls, o["infer_image.raw_cls_feats"])


@torch.no_grad()
def test_dual_encoder_and_text_mlm_paths(fx):
    model, i, o = fx
    close(model.encode_text(i["text_ids"], i["text_masks"]), o["infer_text_ft.cls_feats"])
    close(model.forward_text(i["text_ids"], i["text_masks"]).features, o["infer_text_ft.text_feats"])
    close(model.encode_image(i["image"]), o["infer_image_ft.cls_feats"])
    close(model.forward_image(i["image"]).features, o["infer_image_ft.image_feats"])
    close(model.forward_text(i["text_ids"], i["text_masks"]).features, o["infer_text_mlm.text_feats"])
    masked = model.forward_text(i["text_ids_mlm"], i["text_masks"]).features
    close(masked, o["infer_text_mlm_masked.text_feats"])
    sel = i["text_labels_mlm"] != -100
    close(model.mlm_logits(masked)[sel], o["textmlm.mlm_logits_at_masked"])


@torch.no_grad()
def test_heads_and_losses(fx):
    model, i, o = fx
    p = model.forward_pair(i["text_ids"], i["text_masks"], i["image"])
    close(model.itm_logits(p.pooled), o["itm_score.logits"])
    close(model.vqa_logits(p.pooled), o["vqa_classifier.logits"])
    close(vqa_loss(model.vqa_logits(p.pooled), i["vqa_targets"]), o["compute_vqa.vqa_loss"])
    m = model.forward_pair(i["text_ids_mlm"], i["text_masks"], i["image"])
    logits = model.mlm_logits(m.text_features)
    close(logits, o["mlm_score.logits"])
    close(mlm_loss(logits, i["text_labels_mlm"], weight=0.25)[0], o["compute_mlm.mlm_loss"])
    p0 = model.forward_pair(i["text_ids"], i["text_masks"], i["image"], image_token_type=1).pooled
    p1 = model.forward_pair(i["text_ids"], i["text_masks"], i["image_1"], image_token_type=2).pooled
    close(p0, o["nlvr2.infer_img0_tt1.cls_feats"])
    close(p1, o["nlvr2.infer_img1_tt2.cls_feats"])
    nl = model.nlvr2_logits(i["text_ids"], i["text_masks"], i["image"], i["image_1"])
    close(nl, o["nlvr2_classifier.logits"])
    close(classification_loss(nl, i["nlvr2_labels"])[0], o["compute_nlvr2.nlvr2_loss"])
    close(model.logit_scale.detach(), o["param.logit_scale"])
    close(model.logit_vl_scale.detach(), o["param.logit_vl_scale"])


@torch.no_grad()
def test_contrastive_losses(fx):
    model, i, o = fx
    t = model.contrastive_text(i["text_ids"], i["text_masks"], vl_branch=True)
    v = model.contrastive_image(i["image"], vl_branch=True)
    plain = contrastive_loss(v.embedding, t.embedding, model.logit_scale)
    vl = contrastive_loss(v.vl_embedding, t.vl_embedding, model.logit_vl_scale)
    close(0.5 * (plain.loss + vl.loss), o["compute_itc.itc_loss"])
    close(plain.logits_i2t, o["compute_itc.itc_i2t_logits"])
    close(plain.scale, o["compute_itc.itc_logit_scale"])
    close(vl.scale, o["compute_itc.itc_logit_vl_scale"])
    ft = contrastive_loss(model.encode_image(i["image"]), model.encode_text(i["text_ids"], i["text_masks"]), model.logit_scale)
    close(ft.loss, o["compute_irtr.irtr_loss"])
    close(ft.logits_i2t, o["compute_irtr.irtr_i2t_logits"])


@torch.no_grad()
def test_itm_with_recorded_hard_negatives(fx):
    model, i, o = fx
    neg_img, neg_txt = o["compute_itm_hardneg.neg_image_idx"], o["compute_itm_hardneg.neg_text_idx"]
    ids, masks, img = i["text_ids"], i["text_masks"], i["image"]
    pos = model.forward_pair(ids, masks, img).pooled
    neg_i = model.forward_pair(ids, masks, img[neg_img]).pooled
    neg_t = model.forward_pair(ids[neg_txt], masks[neg_txt], img).pooled
    logits = model.itm_logits(torch.cat([pos, neg_i, neg_t]))
    torch.testing.assert_close(logits, o["compute_itm_hardneg.itm_logits"], atol=1e-5, rtol=1e-5)
    close(itm_loss(logits, 3)[0], o["compute_itm_hardneg.itm_loss"])


@torch.no_grad()
def test_hard_negative_sampler_never_draws_the_positive(fx):
    _, _, o = fx
    logits = o["compute_itc.itc_i2t_logits"]
    for seed in range(20):
        neg = sample_hard_negatives(logits, logits.t(), 3, generator=torch.Generator().manual_seed(seed))
        assert (neg.image_index != torch.arange(3)).all() and (neg.text_index != torch.arange(3)).all()


def test_load_model_accepts_official_file_directly(fx):
    model, i, o = fx
    direct = load_official(FIXTURE / "checkpoint.pt").eval()
    with torch.no_grad():
        close(direct.encode_image(i["image"]), o["infer_image_ft.cls_feats"])
    assert set(direct.state_dict()) == set(model.state_dict())
    assert isinstance(load_model(FIXTURE / "checkpoint.pt"), type(model))
