"""Task heads. Names and layouts follow the official module so that checkpoints map one to one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Pooler(nn.Module):
    """``tanh(dense(x[:, 0]))`` on the fused output: the pooled vision-language feature."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class Projection(nn.Module):
    """Bias-free linear projection into the contrastive space (ITC)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ITMHead(nn.Module):
    """Image-text matching: pooled feature → 2 logits (index 1 = match)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled)


class MLMTransform(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class MLMHead(nn.Module):
    """BERT prediction head: transform (dense, GELU, LayerNorm) → untied decoder + separate bias."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.transform = MLMTransform(dim)
        self.decoder = nn.Linear(dim, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x)) + self.bias


def classifier(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear → LayerNorm → GELU → Linear: the VQA (D→2D→answers) and NLVR2 (2D→2D→2) heads."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class MIMHead(nn.Module):
    """Masked-image modelling: a learned ``[MASK]`` patch embedding and a linear decoder to the patch's pixels.

    The target is the per-patch normalised pixels of masked patches, so no external visual tokenizer is needed;
    ``out_dim`` sizes the decoder for another target (a teacher's patch features in masked data modelling).
    """

    def __init__(self, dim: int, patch_size: int, in_chans: int = 3, out_dim: int | None = None) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder = nn.Linear(dim, out_dim or patch_size * patch_size * in_chans)

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        return self.decoder(patch_features)
