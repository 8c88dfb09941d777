"""Building blocks of the Multiway Transformer: shared attention, modality-expert FFNs and the MoME block.

Parameter names follow the official implementation verbatim (``attn.qkv``, ``attn.q_bias``, ``norm2_text``,
``mlp_imag.fc1``, ``gamma_1`` …) so that released checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

#: ``text``/``image``: unimodal input, every token to that modality's expert. ``vl``: fused ``[text, image]`` input;
#: below the VL-FFN start the first ``split`` tokens go to the language expert and the rest to the vision expert,
#: from the start on every token goes to the VL expert (a unimodal input in ``vl`` mode is the ITC VL branch).
Modality = Literal["text", "image", "vl"]


class Attention(nn.Module):
    """Multi-head self-attention with q and v biases (no k bias), through ``scaled_dot_product_attention``.

    The official code computes ``(q * scale) @ k`` in float32 and adds the bias before softmax; SDPA computes the same
    quantity (fp32 inputs give the same result to rounding) and can use fused kernels on GPU.

    Args:
        dim: model width.
        num_heads: number of heads.
        qkv_bias: learn q and v biases.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``[B, N, D]``; ``attn_bias``: additive ``[B|1, H|1, N, N]`` (relative positions and key padding)."""
        b, n, d = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if attn_bias is not None and attn_bias.dtype != q.dtype:
            attn_bias = attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def _expert(dim: int, hidden: int) -> Mlp:
    """An expert FFN: fc1 → exact-erf GELU → fc2 (dropout 0, as in every official config)."""
    return Mlp(dim, hidden, act_layer=nn.GELU)


class MoMEBlock(nn.Module):
    """Pre-norm block with one shared self-attention and modality experts.

    Args:
        dim: model width.
        num_heads: attention heads.
        mlp_hidden: expert hidden width.
        drop_path: stochastic-depth rate of this block.
        layer_scale_init: initial γ (shared by the experts of the block), or ``None`` for no layer scale.
        with_vlffn: the block holds a vision-language expert.
        eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        drop_path: float = 0.0,
        layer_scale_init: float | None = 0.1,
        with_vlffn: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2_text = nn.LayerNorm(dim, eps=eps)
        self.mlp_text = _expert(dim, mlp_hidden)
        self.norm2_imag = nn.LayerNorm(dim, eps=eps)
        self.mlp_imag = _expert(dim, mlp_hidden)
        self.with_vlffn = with_vlffn
        if with_vlffn:
            self.norm2_vl = nn.LayerNorm(dim, eps=eps)
            self.mlp_vl = _expert(dim, mlp_hidden)
        if layer_scale_init is not None:
            self.gamma_1 = nn.Parameter(layer_scale_init * torch.ones(dim))
            self.gamma_2 = nn.Parameter(layer_scale_init * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def _residual(self, x: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
        return x + self.drop_path(y if gamma is None else gamma * y)

    def forward(
        self,
        x: torch.Tensor,
        modality: Modality,
        attn_bias: torch.Tensor | None = None,
        split: int | None = None,
    ) -> torch.Tensor:
        """Args:
        x: ``[B, N, D]``.
        modality: routing mode (see :data:`Modality`).
        attn_bias: additive attention bias.
        split: length of the text segment of a fused sequence (``vl`` mode below the VL-FFN start).
        """
        x = self._residual(x, self.attn(self.norm1(x), attn_bias), self.gamma_1)
        if modality == "image":
            return self._residual(x, self.mlp_imag(self.norm2_imag(x)), self.gamma_2)
        if modality == "text":
            return self._residual(x, self.mlp_text(self.norm2_text(x)), self.gamma_2)
        if self.with_vlffn:
            return self._residual(x, self.mlp_vl(self.norm2_vl(x)), self.gamma_2)
        if split is None:
            raise ValueError("a fused ('vl') input below the VL-FFN layers needs the text length `split`")
        # each segment gets its own residual (and its own drop-path draw), as in the official block
        text, image = x[:, :split], x[:, split:]
        text = self._residual(text, self.mlp_text(self.norm2_text(text)), self.gamma_2)
        image = self._residual(image, self.mlp_imag(self.norm2_imag(image)), self.gamma_2)
        return torch.cat([text, image], 1)
