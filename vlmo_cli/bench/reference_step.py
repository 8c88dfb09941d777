"""The straightforward stage-3 step, written the way the official code runs it: the test oracle and the baseline.

:func:`reference_vl_step` computes exactly what :func:`vlmo_cli.train.stages.vl_objective` computes, without any of
its shortcuts:

* attention by hand, ``softmax((q·scale) @ kᵀ in fp32 + relative-position bias, padded keys → −inf) @ v``, the
  per-layer bias sliced out of the shared table block by block (official ``Attention.forward``);
* four separate fusion passes per step: MLM, ITM positive, ITM negative images, ITM negative texts;
* the raw pixels, token ids and masks of the whole global batch gathered for the hard negatives.

It reads the parameters of a :class:`~vlmo_cli.model.vlmo.VLMo` (no copy), so the same model can run both steps and
their losses and gradients can be compared (``tests/test_perf_equivalence.py``), and ``vlmo bench`` can measure
the optimised step against it side by side (``benchmarks/bench_train.py``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..model.layers import Attention, MoMEBlock
from ..model.vlmo import VLMo
from ..objectives.classification import mlm_loss
from ..objectives.contrastive import contrastive_loss
from ..objectives.distributed import gather_local_first, gather_rank_order
from ..objectives.matching import HardNegatives, itm_loss, sample_hard_negatives
from ..train.stages import Batch, StageDef, StepOutput, negative_exclusions

NegativeSampler = Callable[..., HardNegatives]


# ---------------------------------------------------------------------- the backbone, by hand
def reference_attention(
    attn: Attention, x: torch.Tensor, rel_bias: torch.Tensor | None, key_mask: torch.Tensor | None,
    sdpa: bool = False,
) -> torch.Tensor:
    """Official attention: scores in fp32, ``+ bias[H, N, N]``, key padding filled with −inf, softmax, cast back.

    ``sdpa=True`` (an ablation for the benchmarks, not the oracle) computes the same through
    ``scaled_dot_product_attention`` with the bias and padding summed into one float mask.
    """
    b, n, d = x.shape
    qkv_bias = None
    if attn.q_bias is not None:
        qkv_bias = torch.cat([attn.q_bias, torch.zeros_like(attn.v_bias), attn.v_bias])
    qkv = F.linear(x, attn.qkv.weight, qkv_bias).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    if sdpa:
        mask = None if rel_bias is None else rel_bias.unsqueeze(0)
        if key_mask is not None:
            pad = torch.zeros(key_mask.shape, dtype=torch.float32, device=x.device)
            pad = pad.masked_fill(key_mask == 0, float("-inf"))[:, None, None, :]
            mask = pad if mask is None else mask + pad
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=None if mask is None else
                                             mask.to(x.dtype), scale=attn.scale)
        return attn.proj(out.transpose(1, 2).reshape(b, n, d))
    q, k, v = qkv[0] * attn.scale, qkv[1], qkv[2]
    scores = q.float() @ k.float().transpose(-2, -1)
    if rel_bias is not None:
        scores = scores + rel_bias.unsqueeze(0)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask.bool()[:, None, None, :], float("-inf"))
    probs = scores.softmax(dim=-1).type_as(x)
    return attn.proj((probs @ v).transpose(1, 2).reshape(b, n, d))


def _residual(block: MoMEBlock, x: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
    return x + block.drop_path(y if gamma is None else gamma * y)


def reference_block(
    block: MoMEBlock,
    x: torch.Tensor,
    modality: str,
    rel_bias: torch.Tensor | None,
    key_mask: torch.Tensor | None,
    split: int | None = None,
    sdpa: bool = False,
) -> torch.Tensor:
    """Official ``Block.forward``: shared attention, then the expert chosen by ``modality``."""
    attn = reference_attention(block.attn, block.norm1(x), rel_bias, key_mask, sdpa)
    x = _residual(block, x, attn, block.gamma_1)
    if modality == "image":
        return _residual(block, x, block.mlp_imag(block.norm2_imag(x)), block.gamma_2)
    if modality == "text":
        return _residual(block, x, block.mlp_text(block.norm2_text(x)), block.gamma_2)
    if block.with_vlffn:
        return _residual(block, x, block.mlp_vl(block.norm2_vl(x)), block.gamma_2)
    text = _residual(block, x[:, :split], block.mlp_text(block.norm2_text(x[:, :split])), block.gamma_2)
    image = _residual(block, x[:, split:], block.mlp_imag(block.norm2_imag(x[:, split:])), block.gamma_2)
    return torch.cat([text, image], 1)


def _position_bias(model: VLMo, kind: str, text_len: int, device: torch.device) -> list[torch.Tensor | None]:
    """Per-layer ``[H, N, N]`` relative-position biases: the shared table gathered once per pass and chunked by layer
    (official ``infer``)."""
    table, depth = model.relative_position_bias_table, model.config.depth
    if table is None:
        return [None] * depth
    index = model._index(kind, text_len, device)
    n = index.shape[0]
    bias = table[index.reshape(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()  # [L*H, N, N]
    return list(torch.chunk(bias, depth, dim=0))


def _run(model: VLMo, x, modality, kind, text_len, key_mask, start, end, split=None, sdpa=False) -> torch.Tensor:
    biases = _position_bias(model, kind, text_len, x.device)
    for i in range(start, end):
        x = reference_block(model.transformer.blocks[i], x, modality, biases[i], key_mask, split, sdpa)
    return x


def reference_unimodal(
    model: VLMo, x: torch.Tensor, modality: str, key_mask: torch.Tensor | None, vl_branch: bool, sdpa: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Final-normed features of an image-only or text-only pass, and of its VL branch (official ``infer_text``)."""
    cfg = model.config
    kind, text_len = ("text", x.shape[1]) if modality == "text" else ("image", 0)
    start = cfg.vlffn_start if vl_branch else cfg.depth
    lower = _run(model, x, modality, kind, text_len, key_mask, 0, start, sdpa=sdpa)
    top = _run(model, lower, modality, kind, text_len, key_mask, start, cfg.depth, sdpa=sdpa)
    vl = None
    if vl_branch:
        vl = model.transformer.norm(_run(model, lower, "vl", kind, text_len, key_mask, start, cfg.depth, sdpa=sdpa))
    return model.transformer.norm(top), vl


def reference_pair(
    model: VLMo, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor, sdpa: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fusion pass over ``[text, image]`` (official ``infer``): ``(pooled, final-normed features)``."""
    text = model.embed_text(input_ids)
    image = model.embed_image(pixel_values)
    x = torch.cat([text, image], 1)
    t = input_ids.shape[1]
    key_mask = torch.cat([attention_mask, torch.ones(image.shape[:2], dtype=attention_mask.dtype,
                                                     device=attention_mask.device)], 1)
    x = model.transformer.norm(_run(model, x, "vl", "pair", t, key_mask, 0, model.config.depth, split=t, sdpa=sdpa))
    return model.pooler(x), x


# ---------------------------------------------------------------------- the stage-3 step
def reference_vl_step(
    model: VLMo,
    batch: Batch,
    task,
    sampler: NegativeSampler = sample_hard_negatives,
    sdpa: bool = False,
    batched_itm: bool = False,
) -> StepOutput:
    """Stage 3 (``itc_weight·ITC + itm_weight·ITM + mlm_weight·MLM``) the straightforward way.

    Args:
        model: the model whose parameters are used.
        batch: a ``pairs`` batch (``input_ids``, ``attention_mask``, ``pixel_values``, ``mlm_input_ids``,
            ``mlm_labels``, optionally ``image_ids``).
        task: the ``pretrain.vl`` settings.
        sampler: draws the hard negatives (tests inject a deterministic one into both implementations).
        sdpa / batched_itm: ablations for the benchmarks (each switches one optimisation of the real step on):
            attention through SDPA; the three ITM fusion passes as one batched pass.
    """
    ids, mask, pixels = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    b = ids.shape[0]
    max_scale = task.logit_scale_max or None

    # ITC: image-only and text-only passes (plus their VL branches)
    img_feats, img_vl = reference_unimodal(model, model.embed_image(pixels), "image", None, task.itc_vl, sdpa)
    txt_feats, txt_vl = reference_unimodal(model, model.embed_text(ids), "text", mask, task.itc_vl, sdpa)
    img_emb = F.normalize(model.itc_image_proj(img_feats[:, 0]), dim=-1)
    txt_emb = F.normalize(model.itc_text_proj(txt_feats[:, 0]), dim=-1)
    plain = contrastive_loss(img_emb, txt_emb, model.logit_scale, task.gather_with_grad, max_scale)
    itc = plain.loss
    metrics = {"itc_i2t_acc": plain.accuracy_i2t, "itc_t2i_acc": plain.accuracy_t2i, "logit_scale": plain.scale.detach()}
    if task.itc_vl:
        vl = contrastive_loss(F.normalize(model.itc_vl_image_proj(img_vl[:, 0]), dim=-1),
                              F.normalize(model.itc_vl_text_proj(txt_vl[:, 0]), dim=-1),
                              model.logit_vl_scale, task.gather_with_grad, max_scale)
        itc = 0.5 * (plain.loss + vl.loss)
        metrics["itc_vl_i2t_acc"] = vl.accuracy_i2t

    # ITM: the raw global batch gathered, then three separate fusion passes
    gather = gather_local_first if plain.local_first else gather_rank_order  # the logits' column order
    with torch.no_grad():
        pool_ids, pool_mask, pool_pixels = (gather(t) for t in (ids, mask, pixels))
    exclusions = negative_exclusions(batch, gather, task.itm_exclude_same_image,
                                     getattr(task, "itm_exclude_same_text", False),
                                     getattr(task, "itm_exclude_same_group", False))
    neg = sampler(plain.logits_i2t, plain.logits_t2i, b, positives=plain.labels, **exclusions)
    if batched_itm:
        pooled, _ = reference_pair(model, torch.cat([ids, ids, pool_ids[neg.text_index]]),
                                   torch.cat([mask, mask, pool_mask[neg.text_index]]),
                                   torch.cat([pixels, pool_pixels[neg.image_index], pixels]), sdpa)
    else:
        pos, _ = reference_pair(model, ids, mask, pixels, sdpa)
        neg_image, _ = reference_pair(model, ids, mask, pool_pixels[neg.image_index], sdpa)
        neg_text, _ = reference_pair(model, pool_ids[neg.text_index], pool_mask[neg.text_index], pixels, sdpa)
        pooled = torch.cat([pos, neg_image, neg_text])
    itm, itm_acc = itm_loss(model.itm_logits(pooled), b)

    # MLM: a fourth fusion pass over the masked text
    _, masked = reference_pair(model, batch["mlm_input_ids"], mask, pixels, sdpa)
    mlm, mlm_acc = mlm_loss(model.mlm_logits(masked[:, : ids.shape[1]]), batch["mlm_labels"], task.mlm_weight)

    total = task.itc_weight * itc + task.itm_weight * itm + mlm
    metrics.update(itc_loss=itc.detach(), itm_loss=itm.detach(), itm_acc=itm_acc, mlm_loss=mlm.detach(), mlm_acc=mlm_acc)
    return StepOutput(total, metrics)


class ReferenceStageModule(nn.Module):
    """:class:`~vlmo_cli.train.build.StageModule` running :func:`reference_vl_step` (for benchmarks)."""

    def __init__(self, model: VLMo, stage_def: StageDef, task, sampler: NegativeSampler = sample_hard_negatives,
                 sdpa: bool = False, batched_itm: bool = False):
        super().__init__()
        if stage_def.name != "pretrain.vl":
            raise ValueError(f"the reference step exists for pretrain.vl only, not {stage_def.name}")
        self.model = model
        self.stage_def = stage_def
        self.task = task
        self.sampler = sampler
        self.sdpa = sdpa
        self.batched_itm = batched_itm

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = reference_vl_step(self.model, batch, self.task, self.sampler, self.sdpa, self.batched_itm)
        return out.loss, out.metrics
