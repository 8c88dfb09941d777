"""AdamW parameter groups, head learning-rate multiplier and the learning-rate schedule.

``no_decay="fixed"`` (default) excludes from weight decay every 1-D parameter (biases, LayerNorm weights, γ, logit
scales), the embeddings, the position tables and the CLS/mask tokens. ``no_decay="compat"`` reproduces the official
substring matching, under which ``norm2_*`` weights, γ, ``cls_token``, ``token_type_embeddings`` and the logit
scales *are* decayed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: the official ``no_decay`` substrings [VU:222-232]
COMPAT_NO_DECAY = (
    "bias", "LayerNorm.bias", "LayerNorm.weight", "norm.bias", "norm.weight",
    "norm1.bias", "norm1.weight", "norm2.bias", "norm2.weight",
)
#: parameters of the task heads that get ``lr * lr_mult_heads`` (official: VQA and NLVR2 classifiers)
HEAD_PREFIXES = ("vqa_classifier", "nlvr2_classifier", "classify_head")


def is_no_decay(name: str, param: torch.Tensor, model_no_decay: set[str], mode: str = "fixed") -> bool:
    if mode == "compat":
        return any(s in name for s in COMPAT_NO_DECAY)
    return param.ndim <= 1 or name in model_no_decay or name.endswith("bias")


def adamw_groups(
    model: nn.Module, lr: float, weight_decay: float, lr_mult_heads: float = 1.0, mode: str = "fixed"
) -> list[dict]:
    """Four AdamW groups: (decay, no decay) × (backbone, heads). Frozen parameters are left out."""
    no_decay_names = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[bool, bool], list[tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (is_no_decay(name, p, no_decay_names, mode), name.startswith(HEAD_PREFIXES))
        groups.setdefault(key, []).append((name, p))
    out = []
    for (no_decay, head), items in sorted(groups.items()):
        out.append(
            {
                "params": [p for _, p in items],
                "names": [n for n, _ in items],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr": lr * (lr_mult_heads if head else 1.0),
                "lr_scale": lr_mult_heads if head else 1.0,
            }
        )
    return out


def build_optimizer(model: nn.Module, train_cfg, fused: bool | None = None) -> torch.optim.AdamW:
    groups = adamw_groups(model, train_cfg.lr, train_cfg.weight_decay, train_cfg.lr_mult_heads, train_cfg.no_decay)
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
