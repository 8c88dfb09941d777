"""BEiT v2's VQ-KD visual tokenizer (Peng et al. 2022, "BEiT v2: Masked Image Modeling with Vector-Quantized Visual
Tokenizers"), its tokenizing half: images → one visual-token id per patch, the targets of BEiT v2's masked image
modelling.

As microsoft/unilm ``beit2/modeling_vqkd.py`` builds it (``VQKD.get_codebook_indices``):

* the encoder is ``beit2/modeling_finetune.VisionTransformer`` with ``get_model_default_params()``: absolute position
  table over CLS + patches, no relative position bias, no layer scale (``init_values=0``), a q and a v bias with a
  zero k bias, exact GELU, LayerNorm epsilon 1e-6, mean-pooling variant (no final ``norm``; ``fc_norm`` applied to
  the patch tokens, CLS dropped);
* ``encode_task_layer``: Linear(D, D) → Tanh → Linear(D, codebook dim), in float32 outside autocast;
* L2 normalisation, then the nearest codebook entry (``quantize.embedding.weight``) by
  ``|z|² + |e|² − 2 z·e``, ties to the lowest id (``argmin``).

The encoder is timm's :class:`~timm.models.beit.Beit` with those settings (its q/v biases with a zero k bias,
``global_pool="avg"`` giving ``fc_norm`` and no ``norm``), so parameter names equal the original's under the same
prefixes (``encoder.blocks.N.attn.qkv.weight``, ``encoder.blocks.N.attn.q_bias``, ``encode_task_layer.0.weight``,
``quantize.embedding.weight``) and a released file loads by filtering keys only (:mod:`vlmo_cli.interop.vqkd`).

Input: the original feeds the tokenizer ``ToTensor()`` images in [0, 1] (``beit2/datasets.py``,
``DataAugmentationForBEiT.visual_token_transform``) and its ``pre_process`` (``process_type="default"``, the one the
pre-training script builds) maps them to [-1, 1] as ``x · 255 / 127.5 − 1``. :func:`tokenizer_input` does that from
pixels normalised as ``(x − mean) / std``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .config_file import ConfigFile

FAMILY = "vqkd"
#: epsilon of every LayerNorm of the encoder (``get_model_default_params``: ``partial(nn.LayerNorm, eps=1e-6)``)
LAYER_NORM_EPS = 1e-6


@dataclass
class VqkdConfig(ConfigFile):
    """Sizes of a VQ-KD tokenizer's encoder and codebook (what ``config.json`` of a tokenizer directory holds, with
    ``"family": "vqkd"``).

    Args:
        image_size: input resolution (square); the position table has ``1 + (image_size // patch_size)²`` rows.
        patch_size: patch size.
        in_chans: image channels.
        embed_dim: encoder width D.
        depth: encoder blocks.
        num_heads: attention heads.
        ffn_dim: hidden width of each block's MLP.
        codebook_size: number of visual tokens.
        codebook_dim: width of the codebook entries (the output of ``encode_task_layer``).
        name: where the config came from (informational).
        family: always ``"vqkd"``.
    """

    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    codebook_size: int = 8192
    codebook_dim: int = 32
    name: str = "custom"
    family: str = FAMILY

    KIND = "VQ-KD"

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def problems(self) -> list[str]:
        out = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                out.append(f"{f.name} must be a positive integer, got {value!r}")
            elif f.type == "str" and not isinstance(value, str):
                out.append(f"{f.name} must be a string, got {value!r}")
        if out:
            return out
        if self.embed_dim % self.num_heads:
            out.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            out.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.family != FAMILY:
            out.append(f"family must be {FAMILY!r}, got {self.family!r}")
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "VQ-KD config") -> "VqkdConfig":
        """A config from JSON-like data; unknown keys and wrong types are reported naming ``source``."""
        if isinstance(data, dict) and data.get("family") != FAMILY:
            raise ConfigError(f"{source}: not a VQ-KD tokenizer config (family {data.get('family')!r}, expected "
                              f"{FAMILY!r})")
        cls.check_keys(data, source)
        try:
            return cls(**data)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{source}: {exc}") from None


def is_vqkd_config(data: Any) -> bool:
    """Whether parsed ``config.json`` data describe a VQ-KD tokenizer."""
    return isinstance(data, dict) and data.get("family") == FAMILY


def tokenizer_input(pixel_values: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """What the VQ-KD encoder sees, from pixels normalised as ``(x − mean) / std`` with ``x`` in [0, 1]: ``x`` is
    recovered as ``pixels · std + mean`` and mapped to [-1, 1] as the original's ``pre_process`` does
    (``x · 255 / 127.5 − 1``).

    With this project's ``mean = std = 0.5`` (:mod:`vlmo_cli.data.transforms`) the result equals the pixels up to
    float rounding.
    """
    shape = (1, -1, 1, 1)
    m = torch.as_tensor(mean, dtype=pixel_values.dtype, device=pixel_values.device).view(shape)
    s = torch.as_tensor(std, dtype=pixel_values.dtype, device=pixel_values.device).view(shape)
    unit = pixel_values * s + m
    return unit * 255.0 / 127.5 - 1.0


class Codebook(nn.Module):
    """The quantizer's codebook (``quantize.embedding.weight`` ``[codebook_size, codebook_dim]``) and the
    nearest-entry look-up; training's EMA statistics are not kept."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(size, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Ids ``[...]`` of the entries nearest to ``z`` ``[..., dim]`` by squared Euclidean distance, computed as
        ``|z|² + |e|² − 2 z·e`` in float32."""
        codes = self.embedding.weight.float()
        flat = z.reshape(-1, z.shape[-1]).float()
        distance = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.t()
        return distance.argmin(1).view(z.shape[:-1])


class VqkdTokenizer(nn.Module):
    """The VQ-KD encoder, ``encode_task_layer`` and codebook: images in [-1, 1] → visual-token ids ``[B, P]``."""

    def __init__(self, cfg: VqkdConfig) -> None:
        super().__init__()
        from timm.models.beit import Beit

        self.config = cfg
        d = cfg.embed_dim
        self.encoder = Beit(
            img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=0,
            global_pool="avg", embed_dim=d, depth=cfg.depth, num_heads=cfg.num_heads, qkv_bias=True,
            mlp_ratio=cfg.ffn_dim / d, init_values=None, use_abs_pos_emb=True, use_rel_pos_bias=False,
            use_shared_rel_pos_bias=False, norm_layer=partial(nn.LayerNorm, eps=LAYER_NORM_EPS),
        )
        built = self.encoder.blocks[0].mlp.fc1.out_features
        if built != cfg.ffn_dim:
            raise ConfigError(f"ffn_dim {cfg.ffn_dim} is not a width timm's Beit builds from embed_dim {d} "
                              f"(it builds {built})")
        self.encode_task_layer = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, cfg.codebook_dim))
        self.quantize = Codebook(cfg.codebook_size, cfg.codebook_dim)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``encode_task_layer``'s output ``[B, P, codebook_dim]`` (before the L2 normalisation) of images
        ``[B, C, H, W]`` in [-1, 1] at the tokenizer's resolution."""
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(f"image size {tuple(images.shape[-2:])} does not match the VQ-KD tokenizer's {size}")
        tokens = self.encoder.forward_features(images)[:, 1:]
        patches = self.encoder.fc_norm(tokens)
        with torch.autocast(device_type=images.device.type, enabled=False):
            head = self.encode_task_layer
            return head(patches.to(head[-1].weight.dtype))

    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Visual-token ids ``[B, P]`` (patches in row-major order) of images in [-1, 1]."""
        return self.quantize(F.normalize(self.features(images).float(), p=2, dim=-1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokenize(images)


def build_vqkd(state: dict[str, torch.Tensor], cfg: VqkdConfig, source: str) -> VqkdTokenizer:
    """A :class:`VqkdTokenizer` of ``cfg`` holding ``state`` (every key required, none extra), in eval mode with
    gradients off: the tokenizer only ever labels images."""
    from .weights import load_state_dict_checked

    with torch.device("meta"):  # every weight comes from ``state``: skip the random initialisation
        model = VqkdTokenizer(cfg)
    model.to_empty(device="cpu")
    for module in model.modules():  # timm's zero k bias is a non-persistent buffer: no state dict sets it
        if getattr(module, "k_bias", None) is not None:
            module.k_bias.zero_()
    load_state_dict_checked(model, state, source=source)
    return model.eval().requires_grad_(False)
