"""Model configuration and the registry of named sizes (tiny, base, base_plus, large).

A :class:`ModelConfig` fully describes the architecture and which heads exist; it is what ``config.json`` in a model
directory holds. The named sizes reproduce the official ``vlmo_*_patch16`` entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config_file import ConfigFile

#: Heads a model may carry. ``itc`` = the two plain projections and ``logit_scale``; ``itc_vl`` = the VL-branch
#: projections and ``logit_vl_scale``; ``mim`` = our light masked-image-modelling head (pixel regression).
KNOWN_HEADS = ("pooler", "itc", "itc_vl", "itm", "mlm", "vqa", "nlvr2", "classify", "mim")


@dataclass
class ModelConfig(ConfigFile):
    """Architecture of a VLMo model.

    Args:
        image_size: input resolution (square); the patch grid is ``image_size // patch_size``.
        patch_size: ViT patch size.
        embed_dim: width D.
        depth: number of MoME blocks.
        num_heads: attention heads.
        mlp_ratio: FFN hidden width / D.
        vlffn_start: first block holding a VL-FFN (``depth`` = no VL-FFN, as in the text stage).
        layer_scale_init: γ initial value, or ``None`` for no layer scale (γ ≡ 1, base_plus).
        relative_position: one shared relative-position-bias table (base, large); otherwise absolute image and text
            position embeddings (base_plus).
        max_text_len: text length the index builders and absolute text positions are sized for.
        max_text_len_of_initckpt: text length sizing the text part of the relative-position table (196).
        vocab_size: WordPiece vocabulary size.
        drop_path_rate: stochastic depth at the last block (linear from 0).
        text_dropout: dropout after the text embedding LayerNorm; ``None`` = ``drop_path_rate`` (official quirk).
        num_modality_types: rows of the modality (token-type) embedding: 2, or 3 for NLVR2.
        layer_norm_eps: LayerNorm epsilon of the backbone.
        heads: heads present in the model (subset of :data:`KNOWN_HEADS`).
        vqa_num_answers: output size of the VQA head.
        num_classes: output size of the ``classify`` head (users' own image-text classification).
        pad_token_id: id of ``[PAD]``.
        init_std: standard deviation of the random initialisation of weights (official 0.02, tuned for width 768;
            narrow models need more for their CLS features to depend on the input at the start of training).
        name: the registered size this config was derived from (informational).
        mim_target_dim: outputs per patch of the ``mim`` head; 0 = the patch's pixels (``patch_size² × 3``); masked
            data modelling with a teacher sets the teacher's feature width.
    """

    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    vlffn_start: int = 10
    layer_scale_init: float | None = 0.1
    relative_position: bool = True
    max_text_len: int = 40
    max_text_len_of_initckpt: int = 196
    vocab_size: int = 30522
    drop_path_rate: float = 0.1
    text_dropout: float | None = None
    num_modality_types: int = 2
    layer_norm_eps: float = 1e-6
    heads: list[str] = field(default_factory=lambda: ["pooler", "itc", "itc_vl", "itm", "mlm"])
    vqa_num_answers: int = 3129
    num_classes: int = 2
    pad_token_id: int = 0
    init_std: float = 0.02
    name: str = "custom"
    mim_target_dim: int = 0

    KIND = "model"

    # ------------------------------------------------------------------ derived sizes
    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_image_tokens(self) -> int:
        return self.grid_size**2 + 1

    @property
    def has_vlffn(self) -> bool:
        return self.vlffn_start < self.depth

    @property
    def effective_text_dropout(self) -> float:
        return self.drop_path_rate if self.text_dropout is None else self.text_dropout

    # ------------------------------------------------------------------ validation / IO
    def problems(self) -> list[str]:
        out = []
        if self.embed_dim % self.num_heads:
            out.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            out.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not 0 <= self.vlffn_start <= self.depth:
            out.append(f"vlffn_start {self.vlffn_start} must lie in [0, depth={self.depth}]")
        if self.num_modality_types not in (2, 3):
            out.append(f"num_modality_types must be 2 or 3, got {self.num_modality_types}")
        if self.max_text_len > self.max_text_len_of_initckpt and self.relative_position:
            out.append(
                f"max_text_len {self.max_text_len} exceeds max_text_len_of_initckpt {self.max_text_len_of_initckpt}"
                " (the relative-position table has no bucket for such offsets)"
            )
        unknown = [h for h in self.heads if h not in KNOWN_HEADS]
        if unknown:
            out.append(f"unknown heads {unknown}; allowed: {list(KNOWN_HEADS)}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            out.append(f"drop_path_rate {self.drop_path_rate} must lie in [0, 1)")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model config") -> "ModelConfig":
        """A config from JSON-like data, every unknown key and wrongly typed value reported (naming ``source``)."""
        cls.check_keys(data, source)
        values = cls.typed(data, source)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        data = cls.read_json(path)
        if isinstance(data, dict):
            data.pop("model_type", None)
            if data.get("family") == "beit3":
                raise ConfigError(f"{path}: a BEiT-3 model (family beit3); this command works on VLMo models only")
        return cls.from_dict(data, source=str(path))


# ---------------------------------------------------------------------- registry of named sizes
_SIZES: dict[str, dict[str, Any]] = {
    # tests and the CPU demo: 4 layers, width 128, 32 px images with 8 px patches
    "tiny": dict(image_size=32, patch_size=8, embed_dim=128, depth=4, num_heads=4, vlffn_start=2),
    # official vlmo_base_patch16
    "base": dict(embed_dim=768, depth=12, num_heads=12, vlffn_start=10),
    # official vlmo_base_plus_patch16: absolute positions, no layer scale
    "base_plus": dict(
        embed_dim=544, depth=24, num_heads=16, vlffn_start=21, layer_scale_init=None, relative_position=False
    ),
    # official vlmo_large_patch16
    "large": dict(embed_dim=1024, depth=24, num_heads=16, vlffn_start=21),
}

#: official ``model_arch`` names (timm registrations of the official code) → the registered size with their shapes
OFFICIAL_ARCHS = {"vlmo_base_patch16": "base", "vlmo_base_plus_patch16": "base_plus", "vlmo_large_patch16": "large"}

LOGIT_SCALE_INIT = math.log(1 / 0.07)


def model_sizes() -> list[str]:
    return list(_SIZES)


def get_config(size: str, **overrides: Any) -> ModelConfig:
    """The registered config ``size`` with ``overrides`` applied."""
    if size not in _SIZES:
        raise ConfigError(f"unknown model size {size!r}; allowed: {model_sizes()}")
    return ModelConfig(**{**_SIZES[size], "name": size, **overrides})
