"""The VLMo module: one Multiway Transformer, three paths.

* image alone (vision experts) and text alone (language experts): the **dual encoder**, with L2-normalised ITC
  embeddings for retrieval;
* a pair ``[text, image]`` (text first): the **fusion encoder**; below ``vlffn_start`` each modality goes to its own
  expert (split at the real text length), from ``vlffn_start`` on every token goes to the vision-language expert;
* the ITC **VL branch**: a unimodal input re-runs the top blocks with the VL expert, reusing the hidden state of
  the lower blocks.

Parameter names equal the official ``VLMo`` LightningModule's, so official state dicts load one to one
(read by :mod:`vlmo_cli.interop.official`, loaded by :mod:`vlmo_cli.factory`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from torch import nn

from .config import LOGIT_SCALE_INIT, ModelConfig
from .embeddings import TextEmbeddings
from .heads import ITMHead, MIMHead, MLMHead, Pooler, Projection, classifier
from .layers import Modality, MoMEBlock
from .position import (
    image_relative_position_index,
    num_table_rows,
    pair_relative_position_index,
    text_relative_position_index,
)


# ---------------------------------------------------------------------- outputs
@dataclass
class UnimodalOutput:
    """Result of an image-only or text-only pass.

    Attributes:
        features: final-normed token features ``[B, N, D]`` (experts of that modality in every block).
        raw_cls: CLS of the last block before the final norm ``[B, D]``.
        vl_features: final-normed features of the VL branch (top blocks with the VL expert), when requested.
    """

    features: torch.Tensor
    raw_cls: torch.Tensor
    vl_features: torch.Tensor | None = None


@dataclass
class PairOutput:
    """Result of the fusion encoder.

    Attributes:
        pooled: ``tanh(dense(text CLS))`` ``[B, D]`` (input of the ITM, VQA and NLVR2 heads).
        text_features: final-normed text token features ``[B, T, D]`` (padding positions included).
        image_features: final-normed image token features ``[B, 1 + P, D]``.
        raw_cls: final-normed text CLS ``[B, D]``.
    """

    pooled: torch.Tensor | None
    text_features: torch.Tensor
    image_features: torch.Tensor
    raw_cls: torch.Tensor


@dataclass
class ContrastiveOutput:
    """L2-normalised ITC embeddings of the plain path and (when the model has a VL branch) of the VL branch."""

    embedding: torch.Tensor
    vl_embedding: torch.Tensor | None
    features: torch.Tensor


class MultiwayTransformer(nn.Module):
    """Patch embedding, image CLS, optional absolute image positions, the MoME blocks and the shared final norm.

    Kept as a sub-module named ``transformer`` to match the official key names.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        # [B, 3, H, W] -> [B, D, H/p, W/p]; the input size is checked in VLMo.embed_image (a readable message)
        self.patch_embed = PatchEmbed(cfg.image_size, cfg.patch_size, 3, d, flatten=False, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = None if cfg.relative_position else nn.Parameter(torch.zeros(1, cfg.num_image_tokens, d))
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear 0 → rate
        self.blocks = nn.ModuleList(
            MoMEBlock(
                d,
                cfg.num_heads,
                cfg.mlp_hidden,
                drop_path=rates[i],
                layer_scale_init=cfg.layer_scale_init,
                with_vlffn=i >= cfg.vlffn_start,
                eps=cfg.layer_norm_eps,
            )
            for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)


class VLMo(nn.Module):
    """VLMo with the heads named in ``cfg.heads``.

    Args:
        cfg: the architecture (see :class:`ModelConfig`).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.embed_dim
        self.transformer = MultiwayTransformer(cfg)
        self.text_embeddings = TextEmbeddings(
            cfg.vocab_size,
            d,
            cfg.max_text_len,
            absolute_positions=not cfg.relative_position,
            dropout=cfg.effective_text_dropout,
            pad_token_id=cfg.pad_token_id,
        )
        self.token_type_embeddings = nn.Embedding(cfg.num_modality_types, d)
        if cfg.relative_position:
            rows = num_table_rows(cfg.grid_size, cfg.max_text_len_of_initckpt)
            self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, cfg.num_heads * cfg.depth))
        else:
            self.relative_position_bias_table = None
        self._index_cache: dict[tuple, torch.Tensor] = {}

        heads = set(cfg.heads)
        self.pooler = Pooler(d) if "pooler" in heads else None
        if "itc" in heads:
            self.itc_text_proj, self.itc_image_proj = Projection(d), Projection(d)
            self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        if "itc_vl" in heads:
            self.itc_vl_text_proj, self.itc_vl_image_proj = Projection(d), Projection(d)
            self.logit_vl_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.itm_score = ITMHead(d) if "itm" in heads else None
        self.mlm_score = MLMHead(d, cfg.vocab_size) if "mlm" in heads else None
        self.vqa_classifier = classifier(d, 2 * d, cfg.vqa_num_answers) if "vqa" in heads else None
        self.nlvr2_classifier = classifier(2 * d, 2 * d, 2) if "nlvr2" in heads else None
        self.classify_head = classifier(d, 2 * d, cfg.num_classes) if "classify" in heads else None
        self.mim_head = MIMHead(d, cfg.patch_size, out_dim=cfg.mim_target_dim or None) if "mim" in heads else None
        self.grad_checkpointing = False
        self.reset_parameters()

    # ------------------------------------------------------------------ construction helpers
    def reset_parameters(self) -> None:
        """Official initialisation: backbone Linear trunc-normal(0.02), embeddings and heads normal(0.02),
        zero biases, LayerNorm (1, 0), γ = ``layer_scale_init``, relative-position table zeros, logit scales log(1/0.07)."""

        std = self.config.init_std

        def backbone(m: nn.Module) -> None:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        def module_level(m: nn.Module) -> None:
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.data.normal_(0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.data.zero_()
            if isinstance(m, nn.LayerNorm):
                m.weight.data.fill_(1.0)
                m.bias.data.zero_()

        self.transformer.apply(backbone)
        nn.init.trunc_normal_(self.transformer.cls_token, std=std)
        if self.transformer.pos_embed is not None:
            nn.init.trunc_normal_(self.transformer.pos_embed, std=std)
        for name, module in self.named_children():
            if name != "transformer":
                module.apply(module_level)
        if self.mim_head is not None:
            nn.init.trunc_normal_(self.mim_head.mask_token, std=std)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (activation checkpointing per block)."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that should not be weight-decayed (besides 1-D tensors)."""
        names = {"transformer.cls_token", "transformer.pos_embed", "relative_position_bias_table"}
        names |= {"logit_scale", "logit_vl_scale", "token_type_embeddings.weight"}
        names |= {n for n, _ in self.text_embeddings.named_parameters(prefix="text_embeddings")}
        if self.mim_head is not None:
            names.add("mim_head.mask_token")
        return names

    # ------------------------------------------------------------------ position information
    def _index(self, kind: str, text_len: int, device: torch.device) -> torch.Tensor:
        key = (kind, text_len, device)
        index = self._index_cache.get(key)
        if index is None:
            cfg = self.config
            if kind == "image":
                index = image_relative_position_index(cfg.grid_size)
            elif kind == "text":
                index = text_relative_position_index(text_len, cfg.grid_size, cfg.max_text_len_of_initckpt)
            else:
                index = pair_relative_position_index(text_len, cfg.grid_size, cfg.max_text_len_of_initckpt)
            index = index.to(device)
            self._index_cache[key] = index
        return index

    def _attention_biases(
        self, kind: str, text_len: int, key_mask: torch.Tensor | None, device: torch.device
    ) -> Callable[[int], torch.Tensor | None]:
        """``bias(i)``: the additive attention bias of block ``i`` (its relative positions plus key padding).

        Built per block when the block runs (inside the recomputed region under activation checkpointing), so at most
        one layer's ``[B, H, N, N]`` bias is alive at a time instead of all of them. A key mask is applied even when it
        masks nothing: checking would read a value back from the device (a sync, and a graph break under
        ``torch.compile``), and text batches nearly always hold some padding.
        """
        pad = None
        if key_mask is not None:
            pad = torch.zeros(key_mask.shape, dtype=torch.float32, device=device)
            pad = pad.masked_fill(key_mask == 0, float("-inf"))[:, None, None, :]
        table = self.relative_position_bias_table
        if table is None:
            return lambda i: pad
        index = self._index(kind, text_len, device)
        h = self.config.num_heads

        def bias(i: int) -> torch.Tensor:
            rel = F.embedding(index, table[:, i * h : (i + 1) * h]).permute(2, 0, 1).unsqueeze(0)  # [1, H, N, N]
            return rel if pad is None else rel + pad

        return bias

    # ------------------------------------------------------------------ embeddings
    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """BERT text embeddings plus modality row 0."""
        return self.text_embeddings(input_ids) + self.token_type_embeddings.weight[0]

    def embed_image(
        self, pixel_values: torch.Tensor, modality_type: int = 1, patch_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Patch tokens with the image CLS in front (+ absolute positions) plus modality row ``modality_type``.

        ``patch_mask`` (``[B, P]`` bool, masked-image modelling) replaces the masked patches by the MIM mask token.
        """
        t = self.transformer
        h, w = pixel_values.shape[-2:]
        size = self.config.image_size
        if h != size or w != size:
            raise ValueError(f"image of size {h}x{w} given to a model built for {size}x{size}; "
                             "resize the images or load the model at that resolution")
        x = t.patch_embed(pixel_values).flatten(2).transpose(1, 2)
        if patch_mask is not None:
            if self.mim_head is None:
                raise ValueError("patch_mask needs a model with the 'mim' head")
            w = patch_mask.unsqueeze(-1).type_as(x)
            x = x * (1 - w) + self.mim_head.mask_token.to(x.dtype) * w
        x = torch.cat([t.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], 1)
        if t.pos_embed is not None:
            x = x + t.pos_embed
        return x + self.token_type_embeddings.weight[modality_type]

    # ------------------------------------------------------------------ block runner
    def _run(
        self,
        x: torch.Tensor,
        modality: Modality,
        bias: Callable[[int], torch.Tensor | None],
        start: int,
        end: int,
        split: int | None = None,
    ) -> torch.Tensor:
        for i in range(start, end):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(self._block, i, x, modality, bias, split, use_reentrant=False)
            else:
                x = self._block(i, x, modality, bias, split)
        return x

    def _block(self, i: int, x: torch.Tensor, modality: Modality, bias, split: int | None) -> torch.Tensor:
        return self.transformer.blocks[i](x, modality, bias(i), split)

    def _unimodal(
        self, x: torch.Tensor, modality: Modality, biases: Callable[[int], torch.Tensor | None], vl_branch: bool
    ) -> UnimodalOutput:
        cfg = self.config
        if vl_branch and not cfg.has_vlffn:
            raise ValueError("the VL branch needs a model with VL-FFN blocks (vlffn_start < depth)")
        start = cfg.vlffn_start if vl_branch else cfg.depth
        lower = self._run(x, modality, biases, 0, start)
        last = self._run(lower, modality, biases, start, cfg.depth)
        vl = None
        if vl_branch:
            vl = self.transformer.norm(self._run(lower, "vl", biases, start, cfg.depth))
        return UnimodalOutput(features=self.transformer.norm(last), raw_cls=last[:, 0], vl_features=vl)

    # ------------------------------------------------------------------ paths
    def forward_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, vl_branch: bool = False
    ) -> UnimodalOutput:
        """Text alone through the language experts (official ``infer_text`` / ``infer_text_ft`` / ``infer_text_mlm``)."""
        x = self.embed_text(input_ids)
        biases = self._attention_biases("text", input_ids.shape[1], attention_mask, x.device)
        return self._unimodal(x, "text", biases, vl_branch)

    def forward_image(
        self,
        pixel_values: torch.Tensor,
        vl_branch: bool = False,
        patch_mask: torch.Tensor | None = None,
        modality_type: int = 1,
    ) -> UnimodalOutput:
        """Image alone through the vision experts (official ``infer_image`` / ``infer_image_ft``)."""
        x = self.embed_image(pixel_values, modality_type, patch_mask)
        biases = self._attention_biases("image", 0, None, x.device)
        return self._unimodal(x, "image", biases, vl_branch)

    def forward_pair(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_token_type: int = 1,
        patch_mask: torch.Tensor | None = None,
    ) -> PairOutput:
        """The fusion encoder over ``[text, image]`` (official ``infer``); ``patch_mask`` as in :meth:`embed_image`."""
        text = self.embed_text(input_ids)
        image = self.embed_image(pixel_values, image_token_type, patch_mask)
        x = torch.cat([text, image], 1)
        t = input_ids.shape[1]
        image_mask = torch.ones(image.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        key_mask = torch.cat([attention_mask, image_mask], 1)
        biases = self._attention_biases("pair", t, key_mask, x.device)
        x = self.transformer.norm(self._run(x, "vl", biases, 0, self.config.depth, split=t))
        pooled = self.pooler(x) if self.pooler is not None else None
        return PairOutput(pooled=pooled, text_features=x[:, :t], image_features=x[:, t:], raw_cls=x[:, 0])

    def forward(self, *args: Any, **kwargs: Any) -> PairOutput:  # nn.Module protocol: the fusion path
        return self.forward_pair(*args, **kwargs)

    # ------------------------------------------------------------------ dual encoder (public API)
    def _contrastive(self, out: UnimodalOutput, proj: str, vl_proj: str) -> ContrastiveOutput:
        emb = F.normalize(getattr(self, proj)(out.features[:, 0]), dim=-1)
        vl = None
        if out.vl_features is not None:
            vl = F.normalize(getattr(self, vl_proj)(out.vl_features[:, 0]), dim=-1)
        return ContrastiveOutput(embedding=emb, vl_embedding=vl, features=out.features)

    def contrastive_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, vl_branch: bool = False
    ) -> ContrastiveOutput:
        """ITC embeddings of texts; with ``vl_branch`` also the VL-branch embedding (pre-training ITC)."""
        return self._contrastive(self.forward_text(input_ids, attention_mask, vl_branch), "itc_text_proj", "itc_vl_text_proj")

    def contrastive_image(self, pixel_values: torch.Tensor, vl_branch: bool = False) -> ContrastiveOutput:
        """ITC embeddings of images; with ``vl_branch`` also the VL-branch embedding (pre-training ITC)."""
        return self._contrastive(self.forward_image(pixel_values, vl_branch), "itc_image_proj", "itc_vl_image_proj")

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised retrieval embeddings of texts ``[B, D]`` (dual encoder)."""
        return self.contrastive_text(input_ids, attention_mask).embedding

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised retrieval embeddings of images ``[B, D]`` (dual encoder)."""
        return self.contrastive_image(pixel_values).embedding

    def encode_pair(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> PairOutput:
        """Fusion-encoder features of image-text pairs."""
        return self.forward_pair(input_ids, attention_mask, pixel_values)

    # ------------------------------------------------------------------ heads
    def itm_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.itm_score(pooled)

    def mlm_logits(self, text_features: torch.Tensor) -> torch.Tensor:
        return self.mlm_score(text_features)

    def vqa_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.vqa_classifier(pooled)

    def classify_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classify_head(pooled)

    def nlvr2_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values_0: torch.Tensor,
        pixel_values_1: torch.Tensor,
    ) -> torch.Tensor:
        """Two fusion passes (image modality rows 1 and 2) → concatenated pooled features → NLVR2 head."""
        p0 = self.forward_pair(input_ids, attention_mask, pixel_values_0, image_token_type=1).pooled
        p1 = self.forward_pair(input_ids, attention_mask, pixel_values_1, image_token_type=2).pooled
        return self.nlvr2_classifier(torch.cat([p0, p1], -1))
