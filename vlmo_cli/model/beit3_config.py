"""Configuration of the BEiT-3 Multiway Transformer and the registry of its named sizes (tiny, base, large).

A :class:`Beit3Config` fully describes a BEiT-3 model and its heads; it is what ``config.json`` of a BEiT-3 model
directory holds, with ``"family": "beit3"`` telling it apart from a VLMo config. The base and large sizes are those
of the released models: microsoft/unilm ``beit3/modeling_utils.py`` builds them as torchscale ``EncoderConfig`` s with
width 768 / 1024, 12 / 16 heads, 12 / 24 layers, FFN width ``4 × width``, ``vocab_size=64010`` (the XLM-R
SentencePiece vocabulary of BEiT-3), multiway, pre-norm with sub-LN (torchscale's default ``subln=True``), a final
LayerNorm (``normalize_output=True``, switched off by the VQA and image-classification models), no output
projection, LayerNorm epsilon 1e-5 and 1024 text positions (torchscale's defaults ``layernorm_eps`` and
``max_source_positions``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .config_file import ConfigFile

FAMILY = "beit3"

#: heads a BEiT-3 model may carry, as the unilm fine-tuning models define them: ``vqa`` (pooler + two-layer
#: classifier), ``nlvr2`` (two-layer MLP over two image-text pairs), ``retrieval`` (vision and language projections
#: plus ``logit_scale``), ``classify`` (mean-pooled patch tokens → LayerNorm → linear), ``captioning`` (linear
#: vocabulary scores of the text tokens, under the captioning attention mask), and this project's ``pair_classify``
#: (``vlmo finetune classify``: the VQA head's layout, pooler + two-layer classifier, on an image-text pair, with
#: ``num_classes`` outputs; no released model has it); and the two heads of masked data modelling
#: (``vlmo pretrain-mdm``), which no released checkpoint carries either: ``mlm`` (linear vocabulary scores of text
#: tokens, the captioning head's layout) and ``mim`` (linear patch targets of image tokens: ``mim_target_dim`` outputs).
KNOWN_HEADS = ("vqa", "nlvr2", "retrieval", "classify", "captioning", "pair_classify", "mlm", "mim")

#: initialisations: ``torchscale`` = the ``BEiT3`` module's own (PyTorch defaults for linear and conv layers, sub-LN
#: scaling of fc1/fc2/out_proj/v_proj by sqrt(log(2·depth)), text embedding N(0, width^-0.5), positions N(0, 1),
#: zero CLS and mask tokens); ``unilm`` = the fine-tuning wrapper's, which afterwards re-draws every linear layer from
#: a normal of std 0.02 truncated at ±0.02 with zero biases and resets LayerNorms to ones and zeros.
INITS = ("torchscale", "unilm")


@dataclass
class Beit3Config(ConfigFile):
    """Architecture of a BEiT-3 model.

    Args:
        image_size: input resolution (square).
        patch_size: patch size; the image sequence is ``1 + (image_size // patch_size)²`` tokens (CLS first).
        in_chans: image channels.
        embed_dim: width D.
        depth: number of Multiway blocks.
        num_heads: attention heads.
        ffn_dim: hidden width of each expert FFN.
        vocab_size: text vocabulary size.
        max_source_positions: rows of the text position table; positions start at 2 (fairseq's convention), so a
            text may hold ``max_source_positions - 2`` tokens.
        layer_norm_eps: epsilon of every LayerNorm of the backbone.
        normalize_output: a final (multiway) LayerNorm after the last block.
        language: the model has its language side (text embedding, text positions and the ``B`` copy of every
            multiway module). ``False`` keeps the vision side only: the layout of the released ImageNet-1k
            classification checkpoints, which hold only the vision-related parameters (87M for base, as the unilm
            README lists).
        drop_path_rate: stochastic depth of the last block (linear from 0 over the blocks).
        heads: heads present (subset of :data:`KNOWN_HEADS`).
        vqa_num_answers: outputs of the VQA head.
        nlvr2_num_classes: outputs of the NLVR2 head.
        num_classes: outputs of the image-classification head (and of ``pair_classify``).
        mim_target_dim: outputs per patch of the ``mim`` head; 0 = the patch's pixels (``patch_size² × in_chans``).
        init: initialisation scheme (:data:`INITS`).
        name: the registered size this config was derived from (informational).
        family: always ``"beit3"``.
    """

    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    vocab_size: int = 64010
    max_source_positions: int = 1024
    layer_norm_eps: float = 1e-5
    normalize_output: bool = True
    language: bool = True
    drop_path_rate: float = 0.0
    heads: list[str] = field(default_factory=list)
    vqa_num_answers: int = 3129
    nlvr2_num_classes: int = 2
    num_classes: int = 1000
    mim_target_dim: int = 0
    init: str = "torchscale"
    name: str = "custom"
    family: str = FAMILY

    KIND = "BEiT-3"

    # ------------------------------------------------------------------ derived sizes
    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_image_tokens(self) -> int:
        """CLS + patches: the length of the image part of a sequence (the multiway split position of a pair)."""
        return self.num_patches + 1

    @property
    def vision_position_rows(self) -> int:
        """Rows of the image position table: one per image token plus the two unused rows of fairseq's offset."""
        return self.num_image_tokens + 2

    @property
    def max_text_len(self) -> int:
        return self.max_source_positions - 2

    def has_head(self, name: str) -> bool:
        return name in self.heads

    # ------------------------------------------------------------------ validation / IO
    def problems(self) -> list[str]:
        out = []
        for name in ("image_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "ffn_dim",
                     "vocab_size", "vqa_num_answers", "nlvr2_num_classes", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                out.append(f"{name} must be a positive integer, got {value!r}")
        if out:
            return out
        if self.embed_dim % self.num_heads:
            out.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            out.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.max_source_positions < 3:
            out.append("max_source_positions must be at least 3 (2 offset rows + 1 token), "
                       f"got {self.max_source_positions}")
        unknown = [h for h in self.heads if h not in KNOWN_HEADS]
        if unknown:
            out.append(f"unknown heads {unknown}; allowed: {list(KNOWN_HEADS)}")
        if not isinstance(self.mim_target_dim, int) or isinstance(self.mim_target_dim, bool) or self.mim_target_dim < 0:
            out.append(f"mim_target_dim must be a non-negative integer, got {self.mim_target_dim!r}")
        text_heads = [h for h in self.heads
                      if h in ("vqa", "nlvr2", "retrieval", "captioning", "pair_classify", "mlm")]
        if not self.language and text_heads:
            out.append(f"heads {text_heads} need the language side (language=false)")
        if not 0.0 <= self.drop_path_rate < 1.0:
            out.append(f"drop_path_rate {self.drop_path_rate} must lie in [0, 1)")
        if self.init not in INITS:
            out.append(f"init must be one of {list(INITS)}, got {self.init!r}")
        if self.family != FAMILY:
            out.append(f"family must be {FAMILY!r}, got {self.family!r}")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "BEiT-3 config") -> "Beit3Config":
        """A config from JSON-like data, every unknown key reported (naming ``source``)."""
        cls.check_keys(data, source)
        if data.get("family", FAMILY) != FAMILY:
            raise ConfigError(f"{source}: not a BEiT-3 config (family {data.get('family')!r})")
        values = cls.typed(data, source)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc


def is_beit3_config(data: Any) -> bool:
    """Whether parsed ``config.json`` data describe a BEiT-3 model."""
    return isinstance(data, dict) and data.get("family") == FAMILY


# ---------------------------------------------------------------------- registry of named sizes
_SIZES: dict[str, dict[str, Any]] = {
    # tests and the CPU demo: 4 blocks, width 128, 32 px images with 8 px patches, 64 text positions
    "tiny": dict(image_size=32, patch_size=8, embed_dim=128, depth=4, num_heads=4, ffn_dim=512,
                 max_source_positions=64),
    # unilm beit3 _get_base_config: width 768, 12 heads, 12 layers, FFN 768 * mlp_ratio 4
    "base": dict(embed_dim=768, depth=12, num_heads=12, ffn_dim=3072),
    # unilm beit3 _get_large_config: width 1024, 16 heads, 24 layers, FFN 1024 * mlp_ratio 4
    "large": dict(embed_dim=1024, depth=24, num_heads=16, ffn_dim=4096),
}

#: (width, depth) of the released architectures → their registered size (the heads follow from these two)
OFFICIAL_SHAPES = {(768, 12): "base", (1024, 24): "large"}


def beit3_sizes() -> list[str]:
    return list(_SIZES)


def get_beit3_config(size: str, **overrides: Any) -> Beit3Config:
    """The registered BEiT-3 size ``size`` with ``overrides`` applied."""
    if size not in _SIZES:
        raise ConfigError(f"unknown BEiT-3 size {size!r}; allowed: {beit3_sizes()}")
    return Beit3Config(**{**_SIZES[size], "name": size, **overrides})
