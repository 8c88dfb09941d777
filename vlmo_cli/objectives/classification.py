"""Losses of the masked-token and task heads, as the official ``compute_mlm``/``compute_vqa``/``compute_nlvr2``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor, weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over masked positions (labels −100 elsewhere), times ``weight`` (0.25 in stage 3).

    Returns ``(loss, accuracy over masked positions)``.
    """
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
    with torch.no_grad():
        sel = labels != -100
        acc = (logits.argmax(-1)[sel] == labels[sel]).float().mean() if sel.any() else torch.zeros(())
    return loss * weight, acc


def vqa_targets(labels: list[list[int]], scores: list[list[float]], num_answers: int) -> torch.Tensor:
    """Dense soft-target matrix ``[B, num_answers]`` from per-question answer indices and scores."""
    out = torch.zeros(len(labels), num_answers)
    for i, (lab, sc) in enumerate(zip(labels, scores)):
        for a, s in zip(lab, sc):
            out[i, a] = s
    return out


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits (mean) × number of answers: sum over answers, mean over questions (official convention)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * targets.shape[1]


def vqa_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """VLMo's training-time VQA score: the soft target of the arg-max answer, summed over the batch."""
    pred = logits.argmax(-1)
    return targets.gather(1, pred[:, None]).sum()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy (NLVR2, user classification) and accuracy."""
    loss = F.cross_entropy(logits.float(), labels)
    with torch.no_grad():
        acc = (logits.argmax(-1) == labels).float().mean()
    return loss, acc


def mim_loss(pred: torch.Tensor, pixel_values: torch.Tensor, patch_mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Masked-image modelling: MSE between predicted and per-patch normalised pixels of the masked patches.

    Args:
        pred: ``[B, P, p*p*3]`` decoder output for every patch token.
        pixel_values: ``[B, 3, H, W]`` input image (before masking).
        patch_mask: ``[B, P]`` bool, True where a patch was masked.
    """
    b, c, h, w = pixel_values.shape
    p = patch_size
    patches = pixel_values.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True)
    target = (patches - mean) / (var + 1e-6).sqrt()
    err = ((pred.float() - target.float()) ** 2).mean(-1)
    m = patch_mask.float()
    return (err * m).sum() / m.sum().clamp(min=1)
