"""Task heads of BEiT-3, with the layouts of the unilm fine-tuning models (``beit3/modeling_finetune.py``).

Within each head the sub-module names are unilm's (``pooler.norm``, ``head.0``, ``norm1``/``dense1`` …), so a
released fine-tuned checkpoint maps onto them by changing its prefix only (see :mod:`vlmo_cli.interop.beit3`). Every
head is initialised as there: linear weights ~ N(0, 0.02²) truncated at ±0.02, zero biases, LayerNorms to ones and
zeros; the NLVR2 and classification output layers are then multiplied by 0.001, and ``logit_scale`` starts at
log(1 / 0.07). LayerNorms of the heads use PyTorch's default epsilon (1e-5), as ``norm_layer=nn.LayerNorm`` does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: factor on the output layers of the NLVR2 and classification heads at initialisation
SMALL_INIT = 0.001


def unilm_init(module: nn.Module) -> None:
    """The unilm BEiT-3 wrapper's ``_init_weights``: linear weights ~ N(0, 0.02²) truncated at ±0.02, zero biases;
    LayerNorms to ones and zeros."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-0.02, b=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _shrink(*layers: nn.Linear) -> None:
    with torch.no_grad():
        for layer in layers:
            layer.weight.mul_(SMALL_INIT)
            layer.bias.mul_(SMALL_INIT)


class Pooler(nn.Module):
    """``tanh(dense(LayerNorm(x[:, 0])))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(self.norm(x[:, 0])))


class VQAHead(nn.Module):
    """Pooler on the first token of the pair, then Linear(D, 2D) → LayerNorm → GELU → Linear(2D, answers)."""

    def __init__(self, dim: int, num_answers: int) -> None:
        super().__init__()
        self.pooler = Pooler(dim)
        self.head = nn.Sequential(nn.Linear(dim, dim * 2), nn.LayerNorm(dim * 2), nn.GELU(),
                                  nn.Linear(dim * 2, num_answers))
        self.apply(unilm_init)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooler(features))


class NLVR2Head(nn.Module):
    """Two-layer MLP over ``[image CLS, text CLS]`` of both pairs (4D): LayerNorm → Linear(4D, 2D) → LayerNorm →
    GELU → Linear(2D, classes)."""

    def __init__(self, dim: int, num_classes: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim * 4)
        self.dense1 = nn.Linear(dim * 4, dim * 2)
        self.norm2 = nn.LayerNorm(dim * 2)
        self.dense2 = nn.Linear(dim * 2, num_classes)
        self.apply(unilm_init)
        _shrink(self.dense1, self.dense2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense2(F.gelu(self.norm2(self.dense1(self.norm1(x)))))


class RetrievalHead(nn.Module):
    """Bias-free projections of the image CLS (``vision_head``) and text CLS (``language_head``), L2-normalised, and
    the learned contrastive temperature ``logit_scale`` (its exponential multiplies the similarities)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.language_head = nn.Linear(dim, dim, bias=False)
        self.vision_head = nn.Linear(dim, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.language_head.apply(unilm_init)
        self.vision_head.apply(unilm_init)

    def embed_image(self, cls: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_head(cls), dim=-1)

    def embed_text(self, cls: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.language_head(cls), dim=-1)


class ClassifyHead(nn.Module):
    """Image classification: mean of the patch tokens → LayerNorm (``fc_norm``) → Linear (``head``)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.apply(unilm_init)
        _shrink(self.head)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(patch_tokens.mean(1)))


class LinearHead(nn.Linear):
    """A linear layer with bias, initialised as unilm's heads: the vocabulary scores of text features (``mlm_head`` of
    unilm's captioning model, and the masked-token head of masked data modelling) and the targets of image patch
    features (the layout of BEiT's ``lm_head``: pixels, a teacher's features or visual-token scores per patch)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__(dim, out_dim)
        unilm_init(self)


def captioning_mask(n_image: int, n_text: int, device: torch.device | None = None) -> torch.Tensor:
    """``[N, N]`` attention mask of unilm's captioning model, 1 = blocked: image tokens attend to image tokens only,
    text tokens to every image token and to the text tokens up to and including themselves."""
    n = n_image + n_text
    allowed = torch.zeros(n, n, dtype=torch.long, device=device)
    allowed[:n_image, :n_image] = 1
    allowed[n_image:, :n_image] = 1
    allowed[n_image:, n_image:] = torch.tril(torch.ones(n_text, n_text, dtype=torch.long, device=device))
    return 1 - allowed
