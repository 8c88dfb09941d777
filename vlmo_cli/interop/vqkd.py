"""Released VQ-KD tokenizers (microsoft/unilm ``beit2/``) → (state dict, :class:`VqkdConfig`), pure functions
(:func:`vlmo_cli.factory.convert_vqkd` writes the tokenizer directory).

A released file (``vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth``,
``vqkd_encoder_base_decoder_1x768x12_dino-663c55d7.pth``, …) holds the state dict of the whole ``VQKD`` training
model under ``model`` (or ``state_dict``): the encoder, ``encode_task_layer``, the quantizer (codebook and its EMA
statistics), the decoder and ``decode_task_layer``; files saved with the teacher also carry ``teacher_model.`` and
``scaling_layer.`` keys, which unilm's own tokenizer loader deletes (with ``loss``). Tokenizing needs the encoder,
``encode_task_layer`` and the codebook only: conversion keeps those under their names, drops the groups of
:data:`DROPPED` and refuses any other key, naming it.

The weights fix every size but one: width, depth, MLP width, patch size and channels (the patch projection), the
resolution (the position table), codebook size and dimension. The number of attention heads is in no shape: it comes
from ``--num-heads`` or, when the encoder has the shape of the released ones, from their configuration; otherwise the
conversion is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..errors import CheckpointError, ConfigError
from ..model.vqkd import VqkdConfig
from .shapes import given_heads, numbered_blocks, square_image_size

State = dict[str, torch.Tensor]

#: prefixes of the keys a tokenizer keeps (the original names)
KEPT_PREFIXES = ("encoder.", "encode_task_layer.")
CODEBOOK = "quantize.embedding.weight"

#: key prefix → the part of the training model it belongs to, dropped by conversion (``loss``, ``teacher`` and
#: ``scaling`` are the prefixes unilm's tokenizer loader deletes)
DROPPED = {
    "decoder.": "decoder",
    "decode_task_layer.": "decode_task_layer",
    "teacher": "teacher",
    "scaling": "scaling_layer",
    "loss": "loss",
    "quantize.cluster_size": "EMA statistics",
    "quantize.embedding.cluster_size": "EMA statistics",
    "quantize.embedding.embed_avg": "EMA statistics",
    "quantize.embedding.initted": "EMA statistics",
}

#: keys every VQ-KD state dict has
REQUIRED = ("encoder.patch_embed.proj.weight", "encoder.pos_embed", "encoder.blocks.0.mlp.fc1.weight",
            "encode_task_layer.2.weight", CODEBOOK)

#: (width, depth, MLP width, patch size) of the released encoders → their head count: every released tokenizer's
#: encoder is ``get_model_default_params()`` of ``beit2/modeling_vqkd.py`` (ViT-B/16, 12 heads)
RELEASED_ENCODERS = {(768, 12, 3072, 16): 12}


@dataclass
class Converted:
    """A converted tokenizer: the kept state dict, its config, where the fields the weights do not fix came from,
    and the dropped keys by part."""

    state: State
    config: VqkdConfig
    sources: dict[str, str]
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"{name} {getattr(self.config, name)} ({how})" for name, how in self.sources.items()]
        if self.dropped:
            groups = [f"{part} ({_blocks(keys)}{len(keys)} keys)" for part, keys in self.dropped.items()]
            parts.append(f"dropped {sum(map(len, self.dropped.values()))} keys: {', '.join(groups)}")
        return "; ".join(parts + ["every other field from the weights"])


def _blocks(keys: list[str]) -> str:
    """``"3 blocks, "`` for the keys of a decoder with 3 blocks, else ``""``."""
    blocks = {m.group(1) for k in keys if (m := re.match(r"decoder\.blocks\.(\d+)\.", k))}
    return f"{len(blocks)} block{'s' if len(blocks) > 1 else ''}, " if blocks else ""


def _few(items: list[str], n: int = 6) -> str:
    return f"[{', '.join(items[:n])}{', ...' if len(items) > n else ''}] ({len(items)} in all)"


def split_released(state: State, source: str) -> tuple[State, dict[str, list[str]], list[str]]:
    """``(kept keys, dropped keys by part, keys that belong nowhere)`` of a released VQ-KD state dict."""
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{source}: not a VQ-KD checkpoint: missing keys [{', '.join(missing)}]; "
                              f"first keys: {list(state)[:5]}")
    kept: State = {}
    dropped: dict[str, list[str]] = {}
    unknown: list[str] = []
    for key, value in state.items():
        part = next((p for prefix, p in DROPPED.items() if key.startswith(prefix)), None)
        if part is not None:
            dropped.setdefault(part, []).append(key)
        elif key.startswith(KEPT_PREFIXES) or key == CODEBOOK:
            kept[key] = value
        else:
            unknown.append(key)
    return kept, dropped, unknown


def _num_heads(shape: tuple[int, int, int, int], num_heads: int | None, source: str) -> tuple[int, str]:
    dim, depth, ffn, patch = shape
    given = given_heads(num_heads, dim, source)
    if given is not None:
        return given
    if shape in RELEASED_ENCODERS:
        return RELEASED_ENCODERS[shape], (f"the released VQ-KD encoder (width {dim}, depth {depth}, MLP {ffn}, "
                                          f"{patch} px patches)")
    raise CheckpointError(
        f"{source}: cannot infer the number of attention heads: no weight's shape holds it and the encoder (width "
        f"{dim}, depth {depth}, MLP {ffn}, {patch} px patches) is not the released one (768/12/3072/16); pass "
        f"--num-heads N (a divisor of {dim})"
    )


def infer_config(state: State, source: str, num_heads: int | None = None) -> tuple[VqkdConfig, dict[str, str]]:
    """The :class:`VqkdConfig` of the kept weights and the source of the one field they do not fix."""
    proj = state["encoder.patch_embed.proj.weight"]
    if proj.dim() != 4 or proj.shape[-1] != proj.shape[-2]:
        raise CheckpointError(f"{source}: encoder.patch_embed.proj.weight {tuple(proj.shape)} is not a square patch "
                              "projection")
    dim, patch = proj.shape[0], proj.shape[-1]
    depth = numbered_blocks(state, r"encoder\.blocks\.(\d+)\.", "the encoder blocks", source)
    ffn = state["encoder.blocks.0.mlp.fc1.weight"].shape[0]
    codebook = state[CODEBOOK]
    task_out = state["encode_task_layer.2.weight"]
    if codebook.dim() != 2 or task_out.shape != (codebook.shape[1], dim):
        raise CheckpointError(f"{source}: encode_task_layer.2.weight {tuple(task_out.shape)} does not map the width "
                              f"{dim} to the codebook's entries {tuple(codebook.shape)}")
    heads, how = _num_heads((dim, depth, ffn, patch), num_heads, source)
    image_size = square_image_size(state["encoder.pos_embed"].shape[-2], 1, patch,
                                   "the position table encoder.pos_embed", "CLS", source)
    try:
        cfg = VqkdConfig(image_size=image_size, patch_size=patch, in_chans=proj.shape[1],
                         embed_dim=dim, depth=depth, num_heads=heads, ffn_dim=ffn, codebook_size=codebook.shape[0],
                         codebook_dim=codebook.shape[1], name="converted")
    except ConfigError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    return cfg, {"num_heads": how}


def convert_state(state: State, source: str, num_heads: int | None = None) -> Converted:
    """Pure conversion of a released VQ-KD state dict (already taken out of its ``model``/``state_dict``
    container): the tokenizing keys, unchanged, and their config.

    Raises:
        CheckpointError: not a VQ-KD state dict, keys that belong nowhere, keys the encoder lacks or has in
            excess (named), or a head count that cannot be known.
    """
    kept, dropped, unknown = split_released(state, source)
    if unknown:
        raise CheckpointError(f"{source}: unexpected keys {_few(unknown)} (neither the tokenizer's encoder, "
                              f"encode_task_layer and codebook nor a known training part: {', '.join(DROPPED)})")
    cfg, sources = infer_config(kept, source, num_heads)
    expected = tokenizer_keys(cfg)
    missing = sorted(expected - set(kept))
    extra = sorted(set(kept) - expected)
    if missing or extra:
        problems = ([f"missing keys {_few(missing)}"] if missing else []) + (
            [f"unexpected keys {_few(extra)}"] if extra else [])
        raise CheckpointError(f"{source}: weights do not match the VQ-KD encoder (absolute positions, q/v biases, "
                              f"no layer scale, no relative position bias, mean pooling): {'; '.join(problems)}")
    return Converted(kept, cfg, sources, dropped)


def tokenizer_keys(cfg: VqkdConfig) -> set[str]:
    """Names of the tokenizer's parameters for ``cfg`` (built on the meta device: no memory, no initialisation)."""
    from ..model.vqkd import VqkdTokenizer

    with torch.device("meta"):
        return set(VqkdTokenizer(cfg).state_dict())
