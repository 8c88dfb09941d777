"""AdamW parameter groups, head learning-rate multiplier and the learning-rate schedule.

``no_decay="fixed"`` (default) excludes from weight decay every 1-D parameter (biases, LayerNorm weights, γ, logit
scales), the embeddings, the position tables and the CLS/mask tokens. ``no_decay="compat"`` reproduces the official
substring matching, under which ``norm2_*`` weights, γ, ``cls_token``, ``token_type_embeddings`` and the logit
scales *are* decayed.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

#: the official ``no_decay`` substrings [VU:222-232]
COMPAT_NO_DECAY = (
    "bias", "LayerNorm.bias", "LayerNorm.weight", "norm.bias", "norm.weight",
    "norm1.bias", "norm1.weight", "norm2.bias", "norm2.weight",
)
#: parameters of the task heads that get ``lr * lr_mult_heads`` (official VLMo: VQA and NLVR2 classifiers; BEiT-3:
#: what unilm ``beit3/optim_factory.get_is_head_flag_for_vit`` flags, the modules named ``head`` of the fine-tuning
#: models: the VQA and pair-classification classifiers without their pooler, and the whole NLVR2 head)
HEAD_PREFIXES = ("vqa_classifier", "nlvr2_classifier", "classify_head", "vqa_head.head.", "nlvr2_head.",
                 "pair_classify_head.head.")
_BLOCK = re.compile(r"(?:^|\.)(?:layers|blocks)\.(\d+)\.")


def layer_id(name: str, depth: int) -> int:
    """Depth of a parameter for layer-wise lr decay, as unilm ``beit3/optim_factory.get_num_layer_for_vit``: 0 for
    the embeddings (names containing ``embed``, CLS / position tokens), ``i + 1`` for block ``i``, ``depth + 1`` for
    everything above (final norm, heads, relative position table)."""
    if "embed" in name or name in ("transformer.cls_token", "transformer.pos_embed"):
        return 0
    match = _BLOCK.search(name)
    return int(match.group(1)) + 1 if match else depth + 1


def layer_scale(name: str, depth: int, layer_decay: float) -> float:
    """``layer_decay ** (depth + 1 - layer_id)``: 1 at the top, ``layer_decay ** (depth + 1)`` for the embeddings."""
    return 1.0 if layer_decay == 1.0 else layer_decay ** (depth + 1 - layer_id(name, depth))


def is_no_decay(name: str, param: torch.Tensor, model_no_decay: set[str], mode: str = "fixed") -> bool:
    if mode == "compat":
        return any(s in name for s in COMPAT_NO_DECAY)
    return param.ndim <= 1 or name in model_no_decay or name.endswith("bias")


def adamw_groups(
    model: nn.Module, lr: float, weight_decay: float, lr_mult_heads: float = 1.0, mode: str = "fixed",
    layer_decay: float = 1.0,
) -> list[dict]:
    """AdamW groups: (decay, no decay) × (backbone, heads), and with ``layer_decay`` < 1 × depth (each group's
    ``lr_scale`` the product of the head multiplier and :func:`layer_scale`). Frozen parameters are left out."""
    no_decay_names = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    depth = model.config.depth
    groups: dict[tuple[bool, bool, float], list[tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (is_no_decay(name, p, no_decay_names, mode), name.startswith(HEAD_PREFIXES),
               layer_scale(name, depth, layer_decay))
        groups.setdefault(key, []).append((name, p))
    out = []
    for (no_decay, head, by_layer), items in sorted(groups.items()):
        scale = (lr_mult_heads if head else 1.0) * by_layer
        out.append(
            {
                "params": [p for _, p in items],
                "names": [n for n, _ in items],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr": lr * scale,
                "lr_scale": scale,
            }
        )
    return out


def build_optimizer(model: nn.Module, train_cfg, fused: bool | None = None) -> torch.optim.AdamW:
    groups = adamw_groups(model, train_cfg.lr, train_cfg.weight_decay, train_cfg.lr_mult_heads, train_cfg.no_decay,
                          train_cfg.layer_decay)
    kwargs = {}
    if fused:
        kwargs["fused"] = True
    return torch.optim.AdamW(
        groups,
        lr=train_cfg.lr,
        betas=tuple(train_cfg.betas),
        eps=train_cfg.eps,
        weight_decay=train_cfg.weight_decay,
        **kwargs,
    )


def warmup_steps(warmup: int | float, total: int) -> int:
    """``warmup`` < 1 is a fraction of the total steps (official ``warmup_steps=0.1``), else a step count."""
    if isinstance(warmup, float) and warmup < 1:
        return int(warmup * total)
    return int(warmup)


def lr_factor(step: int, total: int, warmup: int, schedule: str = "linear", end_factor: float = 0.0) -> float:
    """Multiplier of the peak lr at ``step``: linear warmup from 0, then linear (official) or cosine decay to
    ``end_factor``."""
    if warmup > 0 and step < warmup:
        return step / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    if schedule == "cosine":
        return end_factor + (1 - end_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    return end_factor + (1 - end_factor) * (1 - progress)


def set_lr(optimizer: torch.optim.Optimizer, peak: float, factor: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = peak * g.get("lr_scale", 1.0) * factor
    return peak * factor
