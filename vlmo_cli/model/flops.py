"""Analytic forward FLOPs (multiply-add = 2 FLOPs) and parameter counts per component, for ``model info`` and MFU."""

from __future__ import annotations

from collections import OrderedDict

import torch

from .beit3_config import Beit3Config
from .config import ModelConfig


def block_flops(cfg: ModelConfig | Beit3Config, n: int) -> int:
    """One MoME / Multiway block over ``n`` tokens: qkv, scores, weighted sum, output projection, one expert FFN."""
    d = cfg.embed_dim
    h = cfg.ffn_dim if isinstance(cfg, Beit3Config) else cfg.mlp_hidden
    return 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * h


def beit3_path_flops(cfg: Beit3Config, text_len: int | float) -> dict[str, int]:
    """Forward FLOPs per sample of each path of a BEiT-3 model (backbone only), and of its MLM head over a whole
    text when the model has one."""
    i = cfg.num_image_tokens
    patch = 2 * cfg.num_patches * (cfg.in_chans * cfg.patch_size**2) * cfg.embed_dim
    out = OrderedDict()
    out["image (dual encoder)"] = patch + cfg.depth * block_flops(cfg, i)
    out["text (dual encoder)"] = cfg.depth * block_flops(cfg, text_len)
    out["pair (image first, then text)"] = patch + cfg.depth * block_flops(cfg, text_len + i)
    if cfg.has_head("mlm"):
        out["MLM head (per text)"] = 2 * text_len * cfg.embed_dim * cfg.vocab_size
    return out


def path_flops(cfg: ModelConfig | Beit3Config, text_len: int | None = None) -> dict[str, int]:
    """Forward FLOPs per sample of each path (backbone only; the heads are negligible except MLM's decoder), for
    either family."""
    if isinstance(cfg, Beit3Config):
        return beit3_path_flops(cfg, cfg.max_text_len if text_len is None else text_len)
    t = cfg.max_text_len if text_len is None else text_len
    i = cfg.num_image_tokens
    top = cfg.depth - cfg.vlffn_start
    patch = 2 * (cfg.grid_size**2) * (3 * cfg.patch_size**2) * cfg.embed_dim
    mlm_head = 2 * t * cfg.embed_dim * (cfg.embed_dim + cfg.vocab_size)
    out = OrderedDict()
    out["image (dual encoder)"] = patch + cfg.depth * block_flops(cfg, i)
    out["text (dual encoder)"] = cfg.depth * block_flops(cfg, t)
    out["pair (fusion encoder)"] = patch + cfg.depth * block_flops(cfg, t + i)
    if top:
        out["image VL branch (extra)"] = top * block_flops(cfg, i)
        out["text VL branch (extra)"] = top * block_flops(cfg, t)
    out["MLM head (per text)"] = mlm_head
    # stage 3: 4 fusion passes (MLM, ITM positive, 2 ITM negatives), both unimodal passes with their VL branches
    out["stage-3 step (per pair, forward)"] = (
        4 * out["pair (fusion encoder)"] + out["image (dual encoder)"] + out["text (dual encoder)"]
        + out.get("image VL branch (extra)", 0) + out.get("text VL branch (extra)", 0) + mlm_head
    )
    return out


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameter count per component, in the order the model holds them: shared attention, each expert family,
    image embedding, text and modality embeddings, position table, final norm, each head. ``vlmo model info`` and
    the exported model card both show this breakdown."""
    groups: dict[str, int] = OrderedDict()
    for name, p in model.named_parameters():
        group = _component(name)
        groups[group] = groups.get(group, 0) + p.numel()
    return groups


def _component(name: str) -> str:
    """The :func:`parameter_counts` group of parameter ``name`` (VLMo or BEiT-3 names)."""
    if name.startswith("encoder.layers."):  # BEiT-3: multiway A (image) / B (text) copies
        part = name.split(".", 3)[3]
        if part.startswith(("ffn.", "final_layer_norm.")):
            return "vision experts" if ".A." in f".{part}" else "language experts"
        return "multiway attention (+ its norms)"
    if name.startswith(("vision_embed.", "text_embed.", "encoder.embed_positions.", "encoder.layer_norm.")):
        return {"vision_embed": "image embedding", "text_embed": "text embedding", "encoder": "position tables"
                if ".embed_positions." in name else "final norm"}[name.split(".")[0]]
    if name.startswith("transformer.blocks."):
        part = name.split(".", 3)[3]
        if part.startswith(("mlp_imag", "norm2_imag")):
            return "vision experts"
        if part.startswith(("mlp_text", "norm2_text")):
            return "language experts"
        if part.startswith(("mlp_vl", "norm2_vl")):
            return "vision-language experts"
        return "shared attention (+ norm1, layer scale)"
    if name.startswith(("transformer.patch_embed", "transformer.cls_token", "transformer.pos_embed")):
        return "image embedding"
    if name.startswith(("text_embeddings", "token_type_embeddings")):
        return "text and modality embeddings"
    if name == "relative_position_bias_table":
        return "relative position table"
    if name.startswith("transformer."):
        return "final norm"
    head = name.split(".")[0]
    if head in ("logit_vl_scale", "itc_vl_text_proj", "itc_vl_image_proj"):
        head = "itc_vl (VL-branch projections, logit_vl_scale)"
    elif head in ("logit_scale", "itc_text_proj", "itc_image_proj"):
        head = "itc (projections, logit_scale)"
    return f"head: {head}"
