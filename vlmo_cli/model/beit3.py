"""The BEiT-3 Multiway Transformer (Wang et al. 2022, "Image as a Foreign Language"), as torchscale's ``BEiT3``.

One encoder for three paths: image alone, text alone, and an image-text pair laid out **image first, then text**.
Every block has one shared self-attention whose projections are multiway (an ``A`` copy for image tokens, a ``B``
copy for text tokens), and multiway LayerNorms and FFNs; a pair is split at the number of image tokens. The block is
pre-norm with sub-LN (a LayerNorm on the attention output before ``out_proj`` and one on the FFN hidden layer before
``fc2``)::

    x = x + drop_path(out_proj(LN_inner(attention(LN_attn(x)))))
    x = x + drop_path(fc2(LN_ffn(gelu(fc1(LN_final(x))))))

followed, when ``normalize_output``, by a final multiway LayerNorm. Image tokens are a CLS token and the patch
embeddings (masked patches replaced by the mask token before CLS is prepended); text tokens are a plain embedding
lookup (no scaling). Each modality has its own absolute position table whose positions start at 2 (fairseq's
convention: rows 0 and 1 are never used), added to the tokens of that modality. Text padding positions are zeroed
after the positions are added and masked out as keys in every attention.

Parameter names equal torchscale's (``text_embed``, ``vision_embed``, ``encoder.embed_positions.A``,
``encoder.layers.N.self_attn.q_proj.A`` …), so a torchscale ``BEiT3`` state dict loads one to one; the heads of the
unilm fine-tuning models live in :mod:`vlmo_cli.model.beit3_heads` under their own prefixes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

from .beit3_config import Beit3Config
from .beit3_heads import (ClassifyHead, LinearHead, NLVR2Head, RetrievalHead, VQAHead, captioning_mask,
                          unilm_init)

#: parameters of the encoder that torchscale's sub-LN initialisation multiplies by sqrt(log(2 · depth))
SUBLN_SCALED = ("fc1", "fc2", "out_proj", "v_proj")


# ---------------------------------------------------------------------- outputs
@dataclass
class Beit3Output:
    """Result of one pass of the encoder.

    Attributes:
        features: token features of the last block (after the final LayerNorm when the model has one) ``[B, N, D]``.
        split_position: number of image tokens at the front of the sequence (``N`` for an image alone, 0 for a text
            alone, ``1 + patches`` for a pair).
        padding_mask: ``True`` at padding positions ``[B, N]``.
    """

    features: torch.Tensor
    split_position: int
    padding_mask: torch.Tensor

    @property
    def image_features(self) -> torch.Tensor:
        return self.features[:, : self.split_position]

    @property
    def text_features(self) -> torch.Tensor:
        return self.features[:, self.split_position :]

    @property
    def image_cls(self) -> torch.Tensor | None:
        return self.features[:, 0] if self.split_position > 0 else None

    @property
    def text_cls(self) -> torch.Tensor | None:
        return self.features[:, self.split_position] if self.split_position < self.features.shape[1] else None


# ---------------------------------------------------------------------- building blocks
class Multiway(nn.Module):
    """Two copies of a module: ``A`` for the image tokens, ``B`` for the text tokens of a sequence (``B`` absent in a
    vision-only model).

    ``split`` is the number of image tokens at the front of dimension 1: all tokens go to ``A`` when it covers the
    whole sequence, all to ``B`` when it is 0, else the sequence is cut there and the two results concatenated.
    """

    def __init__(self, make: Callable[[], nn.Module], language: bool = True) -> None:
        super().__init__()
        self.A = make()
        self.B = make() if language else None

    def forward(self, x: torch.Tensor, split: int) -> torch.Tensor:
        if split >= x.shape[1]:
            return self.A(x)
        if self.B is None:
            raise ValueError("this BEiT-3 model has no language side (language=false): it encodes images only")
        if split == 0:
            return self.B(x)
        return torch.cat([self.A(x[:, :split]), self.B(x[:, split:])], dim=1)


class VisionEmbedding(nn.Module):
    """Patch projection, optional replacement of masked patches by the mask token, and a prepended CLS token."""

    def __init__(self, cfg: Beit3Config) -> None:
        super().__init__()
        self.image_size = cfg.image_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))

    def forward(self, image: torch.Tensor, masked_position: torch.Tensor | None = None) -> torch.Tensor:
        """``image`` ``[B, C, H, W]``; ``masked_position`` ``[B, patches]`` (1/True = masked).

        Returns ``[B, 1 + patches, D]``, CLS first."""
        if image.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"image size {tuple(image.shape[-2:])} does not match the model's {self.image_size}")
        x = self.proj(image).flatten(2).transpose(1, 2)
        if masked_position is not None:
            w = masked_position.unsqueeze(-1).type_as(x)
            x = x * (1 - w) + self.mask_token.expand_as(x) * w
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)


class PositionTable(nn.Embedding):
    """Absolute positions of one modality; the ``n`` tokens of a sequence take rows ``2 … n + 1``."""

    OFFSET = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if x.shape[1] + self.OFFSET > self.num_embeddings:
            raise ValueError(f"a sequence of {x.shape[1]} tokens exceeds this position table "
                             f"({self.num_embeddings} rows, the first {self.OFFSET} unused)")
        return self.weight[self.OFFSET : self.OFFSET + x.shape[1]].unsqueeze(0)


class MultiwayAttention(nn.Module):
    """Self-attention with multiway q/k/v/out projections (all with bias) and the sub-LN before ``out_proj``."""

    def __init__(self, cfg: Beit3Config) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.scale = self.head_dim**-0.5
        self.k_proj = Multiway(lambda: nn.Linear(dim, dim), cfg.language)
        self.v_proj = Multiway(lambda: nn.Linear(dim, dim), cfg.language)
        self.q_proj = Multiway(lambda: nn.Linear(dim, dim), cfg.language)
        self.out_proj = Multiway(lambda: nn.Linear(dim, dim), cfg.language)
        self.inner_attn_ln = Multiway(lambda: nn.LayerNorm(dim, eps=cfg.layer_norm_eps), cfg.language)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, split: int, attn_bias: torch.Tensor | None) -> torch.Tensor:
        """``attn_bias``: additive ``[B|1, 1, N|1, N]`` (``-inf`` at padding keys, -1e8 where an attention mask
        blocks) or ``None``."""
        b, n, d = x.shape
        q, k, v = (self._heads(proj(x, split)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if attn_bias is not None and attn_bias.dtype != q.dtype:
            attn_bias = attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.out_proj(self.inner_attn_ln(out, split), split)


class FeedForward(nn.Module):
    """One expert: fc1 → exact GELU (in float32) → sub-LN → fc2."""

    def __init__(self, cfg: Beit3Config) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.embed_dim)
        self.ffn_layernorm = nn.LayerNorm(cfg.ffn_dim, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = F.gelu(h.float()).type_as(h)
        return self.fc2(self.ffn_layernorm(h))


class Beit3Block(nn.Module):
    """Pre-norm Multiway block (residual scale 1: BEiT-3 uses sub-LN, not DeepNorm)."""

    def __init__(self, cfg: Beit3Config, drop_path: float) -> None:
        super().__init__()
        eps = cfg.layer_norm_eps
        self.self_attn = MultiwayAttention(cfg)
        self.self_attn_layer_norm = Multiway(lambda: nn.LayerNorm(cfg.embed_dim, eps=eps), cfg.language)
        self.ffn = Multiway(lambda: FeedForward(cfg), cfg.language)
        self.final_layer_norm = Multiway(lambda: nn.LayerNorm(cfg.embed_dim, eps=eps), cfg.language)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, split: int, attn_bias: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop_path(self.self_attn(self.self_attn_layer_norm(x, split), split, attn_bias))
        return x + self.drop_path(self.ffn(self.final_layer_norm(x, split), split))


class Beit3Encoder(nn.Module):
    """Multiway position tables, the blocks and the optional final multiway LayerNorm."""

    def __init__(self, cfg: Beit3Config) -> None:
        super().__init__()
        tables = iter((cfg.vision_position_rows, cfg.max_source_positions))
        self.embed_positions = Multiway(lambda: PositionTable(next(tables), cfg.embed_dim), cfg.language)
        step = cfg.drop_path_rate / (cfg.depth - 1) if cfg.depth > 1 else 0.0
        rates = [i * step for i in range(cfg.depth)]  # linear from 0 to drop_path_rate, as numpy.linspace
        self.layers = nn.ModuleList([Beit3Block(cfg, rates[i]) for i in range(cfg.depth)])
        self.grad_checkpointing = False
        self.layer_norm = (
            Multiway(lambda: nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps), cfg.language)
            if cfg.normalize_output
            else None
        )

    def forward(self, x: torch.Tensor, split: int, padding_mask: torch.Tensor,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``padding_mask`` ``[B, N]`` (True = padding); ``attn_mask`` ``[N, N]`` (1/True = query row may not attend
        to key column), added as -1e8 as torchscale does."""
        x = x + self.embed_positions(x, split)
        x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        bias = None
        if padding_mask.any():
            bias = torch.zeros(padding_mask.shape, dtype=x.dtype, device=x.device)
            bias = bias.masked_fill(padding_mask, float("-inf"))[:, None, None, :]
        if attn_mask is not None:
            blocked = torch.zeros(attn_mask.shape, dtype=x.dtype, device=x.device)
            blocked = blocked.masked_fill(attn_mask.to(device=x.device, dtype=torch.bool), -1e8)[None, None]
            bias = blocked if bias is None else bias + blocked
        for layer in self.layers:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, split, bias, use_reentrant=False)
            else:
                x = layer(x, split, bias)
        return self.layer_norm(x, split) if self.layer_norm is not None else x


# ---------------------------------------------------------------------- the model
class Beit3(nn.Module):
    """BEiT-3: embeddings, the Multiway encoder and the heads named in ``cfg.heads``.

    Inputs follow BEiT-3's conventions: images ``[B, C, H, W]`` (normalised as the model was trained), text ids
    ``[B, T]`` and a text **padding** mask ``[B, T]`` (1/True = padding), the pair laid out image first.
    """

    def __init__(self, cfg: Beit3Config) -> None:
        super().__init__()
        self.config = cfg
        self.text_embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim) if cfg.language else None
        self.vision_embed = VisionEmbedding(cfg)
        self.encoder = Beit3Encoder(cfg)
        if cfg.has_head("vqa"):
            self.vqa_head = VQAHead(cfg.embed_dim, cfg.vqa_num_answers)
        if cfg.has_head("nlvr2"):
            self.nlvr2_head = NLVR2Head(cfg.embed_dim, cfg.nlvr2_num_classes)
        if cfg.has_head("retrieval"):
            self.retrieval_head = RetrievalHead(cfg.embed_dim)
        if cfg.has_head("classify"):
            self.classify_head = ClassifyHead(cfg.embed_dim, cfg.num_classes)
        if cfg.has_head("captioning"):
            self.captioning_head = LinearHead(cfg.embed_dim, cfg.vocab_size)
        if cfg.has_head("pair_classify"):  # this project's image-text classification: the VQA head's layout
            self.pair_classify_head = VQAHead(cfg.embed_dim, cfg.num_classes)
        if cfg.has_head("mlm"):  # masked data modelling: masked text tokens
            self.mlm_head = LinearHead(cfg.embed_dim, cfg.vocab_size)
        if cfg.has_head("mim"):  # masked data modelling: masked image patches
            self.mim_head = LinearHead(cfg.embed_dim, cfg.mim_target_dim or cfg.patch_size**2 * cfg.in_chans)
        self._init_backbone()

    # ------------------------------------------------------------------ initialisation
    def _init_backbone(self) -> None:
        """torchscale's initialisation (see :data:`~vlmo_cli.model.beit3_config.INITS`), then unilm's on request.

        Linear, conv and LayerNorm layers keep PyTorch's defaults, as in torchscale; what differs is set here.
        """
        cfg = self.config
        with torch.no_grad():
            if self.text_embed is not None:
                nn.init.normal_(self.text_embed.weight, mean=0.0, std=cfg.embed_dim**-0.5)
            scale = math.sqrt(math.log(cfg.depth * 2))
            for name, p in self.encoder.named_parameters():
                if any(part in name for part in SUBLN_SCALED):
                    p.mul_(scale)
        if cfg.init == "unilm":
            self.encoder.apply(unilm_init)
            self.vision_embed.apply(unilm_init)

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW does not decay besides the 1-D ones: the image position table and CLS token (the unilm
        wrapper's ``no_weight_decay``)."""
        return {"encoder.embed_positions.A.weight", "vision_embed.cls_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (``--checkpoint_activations`` of the unilm scripts)."""
        self.encoder.grad_checkpointing = enable

    # ------------------------------------------------------------------ encoder paths
    def forward(
        self,
        text_ids: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        text_padding_mask: torch.Tensor | None = None,
        vision_masked_position: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> Beit3Output:
        """Encode an image, a text, or a pair (both given). ``attn_mask`` ``[N, N]`` (1 = blocked) restricts which
        tokens each token attends to (the captioning mask). Returns :class:`Beit3Output`."""
        if text_ids is None and image is None:
            raise ValueError("BEiT-3 needs an image, a text or both")
        parts, masks = [], []
        if image is not None:
            x_img = self.vision_embed(image, vision_masked_position)
            parts.append(x_img)
            masks.append(torch.zeros(x_img.shape[:2], dtype=torch.bool, device=x_img.device))
        if text_ids is not None:
            if self.text_embed is None:
                raise ValueError("this BEiT-3 model has no language side (language=false): it encodes images only")
            parts.append(self.text_embed(text_ids))
            pad = text_padding_mask if text_padding_mask is not None else torch.zeros_like(text_ids)
            masks.append(pad.to(device=text_ids.device, dtype=torch.bool))
        split = parts[0].shape[1] if image is not None else 0
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        padding = torch.cat(masks, dim=1) if len(masks) > 1 else masks[0]
        return Beit3Output(self.encoder(x, split, padding, attn_mask), split, padding)

    def encode_image(self, image: torch.Tensor, masked_position: torch.Tensor | None = None) -> Beit3Output:
        return self(image=image, vision_masked_position=masked_position)

    def encode_text(self, text_ids: torch.Tensor, padding_mask: torch.Tensor | None = None) -> Beit3Output:
        return self(text_ids=text_ids, text_padding_mask=padding_mask)

    def encode_pair(self, image: torch.Tensor, text_ids: torch.Tensor,
                    padding_mask: torch.Tensor | None = None) -> Beit3Output:
        return self(text_ids=text_ids, image=image, text_padding_mask=padding_mask)

    # ------------------------------------------------------------------ task heads (unilm fine-tuning models)
    def _head(self, name: str) -> nn.Module:
        if not self.config.has_head(name):
            raise ValueError(f"this BEiT-3 model has no {name!r} head (heads: {self.config.heads})")
        return getattr(self, f"{name}_head")

    def vqa_logits(self, image: torch.Tensor, question_ids: torch.Tensor,
                   padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Answer scores ``[B, answers]`` from the first token (the image CLS) of the pair."""
        return self._head("vqa")(self.encode_pair(image, question_ids, padding_mask).features)

    def nlvr2_logits(self, image_a: torch.Tensor, image_b: torch.Tensor, text_ids: torch.Tensor,
                     padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, classes]``: both pairs in one batch; each pair gives its image CLS and text CLS."""
        bsz = text_ids.shape[0]
        pad = padding_mask if padding_mask is not None else torch.zeros_like(text_ids)
        out = self.encode_pair(torch.cat([image_a, image_b]), torch.cat([text_ids, text_ids]), torch.cat([pad, pad]))
        cls = torch.cat([out.image_cls, out.text_cls], dim=-1)
        return self._head("nlvr2")(torch.cat(cls.split([bsz, bsz]), dim=-1))

    def retrieval_embeddings(
        self, image: torch.Tensor | None = None, text_ids: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """L2-normalised ``(image, text)`` embeddings of the dual encoder (each ``None`` when its input is)."""
        head = self._head("retrieval")
        img = head.embed_image(self.encode_image(image).features[:, 0]) if image is not None else None
        txt = head.embed_text(self.encode_text(text_ids, padding_mask).features[:, 0]) if text_ids is not None else None
        return img, txt

    def captioning_logits(self, image: torch.Tensor, text_ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                          masked_position: torch.Tensor | None = None) -> torch.Tensor:
        """Vocabulary scores of the text tokens ``[B, T, vocab]`` (or of the ``masked_position`` ones, flattened) under
        the captioning mask: image tokens see the image, text tokens the image and the text up to themselves."""
        n_image = self.config.num_image_tokens
        mask = captioning_mask(n_image, text_ids.shape[1], text_ids.device)
        text = self(text_ids, image, padding_mask, attn_mask=mask).features[:, n_image:]
        if masked_position is not None:
            text = text[masked_position.bool()]
        return self._head("captioning")(text)

    def pair_classify_logits(self, image: torch.Tensor, text_ids: torch.Tensor,
                             padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class scores ``[B, num_classes]`` of an image-text pair: pooler on its first token, then the two-layer
        classifier (as :meth:`vqa_logits`)."""
        return self._head("pair_classify")(self.encode_pair(image, text_ids, padding_mask).features)

    def classify_logits(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, classes]`` from the mean of the patch tokens (CLS excluded)."""
        return self._head("classify")(self.encode_image(image).features[:, 1:])


def resize_vision_positions(table: torch.Tensor, new_grid: int) -> torch.Tensor:
    """The image position table for a ``new_grid × new_grid`` patch grid: the 3 leading rows (2 offset rows and
    CLS) kept, the patch rows resized bicubically (``align_corners=False``), as the unilm loader does."""
    extra, patches = table[:3], table[3:]
    old_grid = math.isqrt(patches.shape[0])
    if old_grid * old_grid != patches.shape[0]:
        raise ValueError(f"image position table of {table.shape[0]} rows is not 3 + a square grid")
    if old_grid == new_grid:
        return table.clone()
    dim = table.shape[1]
    grid = patches.float().reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    resized = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, dim).to(table.dtype)
    return torch.cat([extra, resized], dim=0)
