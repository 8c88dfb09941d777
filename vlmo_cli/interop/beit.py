"""BEiT weights → VLMo (stage-1 initialisation of the attention and the vision experts).

Accepts the unilm BEiT format (``model``/``module`` containers, per-layer
``blocks.{i}.attn.relative_position_bias_table``
of fine-tuned checkpoints or the shared ``rel_pos_bias.relative_position_bias_table`` of MIM checkpoints) and timm's
``beit_*`` state dicts (same names; timm's index buffers are non-persistent). Mapping:

* ``blocks.{i}.norm1`` / ``attn.{qkv,q_bias,v_bias,proj}`` / ``gamma_{1,2}`` → ``transformer.blocks.{i}.*``
* ``blocks.{i}.norm2`` → ``norm2_imag``, ``blocks.{i}.mlp`` → ``mlp_imag`` (the vision expert)
* ``patch_embed.proj``, ``cls_token`` (and ``pos_embed`` for the absolute-position variant) → ``transformer.*``
* relative-position tables → rows ``[0, (2W-1)^2 + 3)`` of the shared table, layer ``l`` in columns
  ``l*H:(l+1)*H`` (per-layer tables concatenated layer-major as the official converter does; a shared table is
  broadcast to every layer; both present = summed, which is what BEiT's attention adds). The text and cross-modal
  rows stay zero. BEiT and VLMo use the same image bucket layout (2-D offset ``query - key``, row-major, then the
  three CLS buckets), so rows copy one to one; another resolution is resized with BEiT's geometric resampling
  (:mod:`vlmo_cli.model.position`).
* final norm: ``norm`` when the checkpoint has one (MIM checkpoints, timm with token pooling); otherwise, by default,
  ``fc_norm`` (fine-tuned BEiT with mean pooling, whose ``norm`` is Identity). ``fc_norm`` normalises the pooled
  patch tokens instead of every token, but it is the only final LayerNorm such a checkpoint trained, and it keeps
  the imported image features on the scale the next layers saw. ``final_norm="official"`` leaves
  ``transformer.norm`` at its init instead, as the official ``convert_to_textpt_ckpt`` does.

The language and VL experts are initialised as the caller says: ``"random"`` (official: the model's own init) or
``"image"`` (a copy of the vision expert). Classifier and MIM heads (``head``, ``lm_head``, ``mask_token`` …) and
index buffers are dropped; any other key, or a missing one, is a :class:`CheckpointError` naming the keys.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

import torch

from ..errors import CheckpointError
from ..model.config import ModelConfig
from ..model.position import num_image_buckets, num_table_rows, resize_image_relative_table
from ..model.weights import few, key_problems, load_state_dict_checked
from .official import read_checkpoint, unwrap_state_dict

ExpertInit = Literal["random", "image"]
FinalNorm = Literal["auto", "official"]

#: keys (exact or by prefix / suffix) that BEiT checkpoints carry but VLMo has no place for
_DROPPED_EXACT = {"mask_token"}
_DROPPED_PREFIXES = ("head.", "lm_head.", "cls_pt_layers.")
_DROPPED_SUFFIXES = ("relative_position_index",)

_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
#: per-block BEiT names → VLMo names (relative to ``transformer.blocks.{i}.``)
_BLOCK_MAP = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attn.qkv.weight": "attn.qkv.weight",
    "attn.q_bias": "attn.q_bias",
    "attn.v_bias": "attn.v_bias",
    "attn.proj.weight": "attn.proj.weight",
    "attn.proj.bias": "attn.proj.bias",
    "norm2.weight": "norm2_imag.weight",
    "norm2.bias": "norm2_imag.bias",
    "mlp.fc1.weight": "mlp_imag.fc1.weight",
    "mlp.fc1.bias": "mlp_imag.fc1.bias",
    "mlp.fc2.weight": "mlp_imag.fc2.weight",
    "mlp.fc2.bias": "mlp_imag.fc2.bias",
}
_GAMMAS = ("gamma_1", "gamma_2")
_EXPERT_PARTS = ("norm2_{}.weight", "norm2_{}.bias", "mlp_{}.fc1.weight", "mlp_{}.fc1.bias", "mlp_{}.fc2.weight",
                 "mlp_{}.fc2.bias")


def _unwrap(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in unwrap_state_dict(state).items() if isinstance(v, torch.Tensor)}


def _check_architecture(state: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> None:
    """One error listing every way the BEiT weights differ from ``cfg`` (a wrong ``--size``)."""
    if any(k.startswith("transformer.blocks.") for k in state):
        raise CheckpointError(f"{source}: this is a VLMo checkpoint, not BEiT; use `vlmo convert official`")
    if "cls_token" not in state or "patch_embed.proj.weight" not in state or "blocks.0.attn.qkv.weight" not in state:
        raise CheckpointError(
            f"{source}: not a BEiT checkpoint (expected cls_token, patch_embed.proj.weight, blocks.0.attn.qkv.weight); "
            f"first keys: {list(state)[:6]}"
        )
    depth = 1 + max(int(m.group(1)) for k in state if (m := _BLOCK.match(k)))
    found = {
        "width": state["cls_token"].shape[-1],
        "depth": depth,
        "patch size": state["patch_embed.proj.weight"].shape[-1],
        "MLP width": state["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in state else None,
    }
    tables = [v for k, v in state.items() if k.endswith("relative_position_bias_table")]
    if tables:
        found["heads"] = tables[0].shape[1]
    wanted = {"width": cfg.embed_dim, "depth": cfg.depth, "patch size": cfg.patch_size, "MLP width": cfg.mlp_hidden,
              "heads": cfg.num_heads}
    diffs = [f"{k} {found[k]} (config: {wanted[k]})" for k in found if found[k] is not None and found[k] != wanted[k]]
    has_gamma = "blocks.0.gamma_1" in state
    if has_gamma and cfg.layer_scale_init is None:
        diffs.append("layer scale γ present (config has none)")
    if tables and not cfg.relative_position:
        diffs.append("relative position tables present (config uses absolute positions)")
    if "pos_embed" in state and cfg.relative_position:
        diffs.append("absolute position embeddings present (config uses relative positions)")
    if not tables and cfg.relative_position:
        diffs.append("no relative position table (config uses relative positions)")
    if diffs:
        raise CheckpointError(
            f"{source}: the BEiT weights do not fit model size {cfg.name!r}: " + "; ".join(diffs)
            + ". Pick the --size that matches the checkpoint."
        )


def _merge_tables(state: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> torch.Tensor:
    """The VLMo shared table with the BEiT image rows filled in (everything else zero)."""
    per_layer = [state.get(f"blocks.{i}.attn.relative_position_bias_table") for i in range(cfg.depth)]
    shared = state.get("rel_pos_bias.relative_position_bias_table")
    present = [t for t in per_layer if t is not None]
    if present and len(present) != cfg.depth:
        missing = [f"blocks.{i}.attn.relative_position_bias_table" for i, t in enumerate(per_layer) if t is None]
        raise CheckpointError(f"{source}: missing keys {few(missing)}")
    ref = present[0] if present else shared
    rows = ref.shape[0]
    src_grid = (math.isqrt(rows - 3) + 1) // 2
    if num_image_buckets(src_grid) != rows:
        raise CheckpointError(f"{source}: relative_position_bias_table has {rows} rows, not a BEiT (2W-1)^2+3 layout")
    columns = []
    for t in per_layer:
        layer = torch.zeros_like(ref, dtype=torch.float32) if t is None else t.float()
        if shared is not None:
            layer = layer + shared.float()
        columns.append(layer)
    image_rows = torch.cat(columns, dim=1)  # [(2W-1)^2 + 3, L*H], layer-major
    if src_grid != cfg.grid_size:
        image_rows = resize_image_relative_table(image_rows, src_grid, cfg.grid_size)
    table = torch.zeros(num_table_rows(cfg.grid_size, cfg.max_text_len_of_initckpt), cfg.num_heads * cfg.depth)
    table[: image_rows.shape[0]] = image_rows
    return table


def beit_state_dict(
    state: dict[str, torch.Tensor], cfg: ModelConfig, source: str = "", final_norm: FinalNorm = "auto"
) -> dict[str, torch.Tensor]:
    """Map a BEiT state dict onto VLMo names (the keys BEiT can provide; experts other than vision are absent)."""
    state = _unwrap(state)
    _check_architecture(state, cfg, source)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str) -> None:
        out[dst] = state[src]
        used.add(src)

    missing: list[str] = []
    for i in range(cfg.depth):
        for src, dst in _BLOCK_MAP.items():
            key = f"blocks.{i}.{src}"
            if key in state:
                take(key, f"transformer.blocks.{i}.{dst}")
            else:
                missing.append(key)
        for g in _GAMMAS:
            key = f"blocks.{i}.{g}"
            if key in state:
                take(key, f"transformer.blocks.{i}.{g}")
            elif cfg.layer_scale_init is not None:  # no layer scale == γ ≡ 1, exactly
                out[f"transformer.blocks.{i}.{g}"] = torch.ones(cfg.embed_dim)
    embeddings = ["patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token"]
    if not cfg.relative_position:
        embeddings.append("pos_embed")
    for key in embeddings:
        if key in state:
            take(key, f"transformer.{key}")
        else:
            missing.append(key)
    if cfg.relative_position:
        out["relative_position_bias_table"] = _merge_tables(state, cfg, source)
        used |= {k for k in state if k.endswith("relative_position_bias_table")}

    norm = "norm" if "norm.weight" in state else "fc_norm" if "fc_norm.weight" in state else None
    if norm == "fc_norm" and final_norm == "official":
        norm = None
    if norm is not None:
        take(f"{norm}.weight", "transformer.norm.weight")
        take(f"{norm}.bias", "transformer.norm.bias")
    elif final_norm == "auto":
        missing.append("norm.weight (or fc_norm.weight)")

    dropped = {
        k for k in state
        if k in _DROPPED_EXACT or k.startswith(_DROPPED_PREFIXES) or k.endswith(_DROPPED_SUFFIXES)
        or k.startswith("fc_norm.")
    }
    unexpected = sorted(set(state) - used - dropped)
    problems = key_problems(missing, unexpected)
    if problems:
        raise CheckpointError(f"{source}: cannot import as BEiT: " + "; ".join(problems))
    return out


def convert_beit(
    checkpoint: str | Path | dict[str, torch.Tensor],
    cfg: ModelConfig,
    init_text: ExpertInit = "random",
    init_vl: ExpertInit = "random",
    final_norm: FinalNorm = "auto",
    seed: int | None = 0,
    source: str | None = None,
):
    """A :class:`~vlmo_cli.model.vlmo.VLMo` of architecture ``cfg`` initialised from BEiT weights.

    Args:
        checkpoint: a BEiT ``.pth`` file (unilm or timm) or an in-memory state dict.
        cfg: the target architecture; it must match the BEiT weights in width, depth, heads, MLP width, patch size
            and layer scale (the resolution may differ: the relative-position table is resized). Without a
            relative-position table nothing in the weights fixes the number of heads: it is taken from ``cfg``.
        init_text: language experts (``mlp_text``/``norm2_text``): ``"random"`` (official) or ``"image"`` (a copy).
        init_vl: VL experts (``mlp_vl``/``norm2_vl``, blocks ``>= vlffn_start``): ``"random"`` or ``"image"``.
        final_norm: ``"auto"`` (``norm``, else ``fc_norm``) or ``"official"`` (``norm``, else left at init).
        seed: seed of the parameters not taken from BEiT (text embeddings, heads, random experts); ``None`` =
            the current RNG state.
        source: the name of an in-memory ``checkpoint`` in messages (default ``<state dict>``).
    """
    from ..model.vlmo import VLMo

    for name, value in (("init_text", init_text), ("init_vl", init_vl)):
        if value not in ("random", "image"):
            raise CheckpointError(f"{name} must be 'random' or 'image', got {value!r}")
    if final_norm not in ("auto", "official"):
        raise CheckpointError(f"final_norm must be 'auto' or 'official', got {final_norm!r}")
    if isinstance(checkpoint, (str, Path)):
        source, state = str(checkpoint), read_checkpoint(checkpoint)[0]
    else:
        source, state = source or "<state dict>", checkpoint
    mapped = beit_state_dict(state, cfg, source=source, final_norm=final_norm)

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = VLMo(cfg)
    full = model.state_dict()
    shape = [f"{k}: {tuple(v.shape)} vs model {tuple(full[k].shape)}" for k, v in mapped.items()
             if k in full and v.shape != full[k].shape]
    if shape:
        raise CheckpointError(f"{source}: BEiT weights do not fit the model: shape mismatches {few(shape)}")
    for key, value in mapped.items():
        full[key] = value.to(full[key].dtype)
    for i in range(cfg.depth):
        prefix = f"transformer.blocks.{i}."
        targets = [("text", init_text)] + ([("vl", init_vl)] if i >= cfg.vlffn_start else [])
        for expert, how in targets:
            if how == "image":
                for part in _EXPERT_PARTS:
                    full[prefix + part.format(expert)] = full[prefix + part.format("imag")].clone()
    load_state_dict_checked(model, full, source=source, strict=True)
    return model


def describe_sources(state: dict[str, torch.Tensor], cfg: ModelConfig, config_by: str, heads_by: str | None = None) -> str:
    """Where each field of a BEiT conversion came from: the weights fix the vision side (checked against ``cfg``),
    the head count only through a relative-position table; the rest is the chosen config's."""
    has_table = any(k.endswith("relative_position_bias_table") for k in _unwrap(state))
    heads = "weights" if has_table else f"{heads_by or config_by}; no relative-position table fixes it"
    return (
        f"num_heads {cfg.num_heads} ({heads}); vocab_size {cfg.vocab_size}, max_text_len {cfg.max_text_len}, "
        f"max_text_len_of_initckpt {cfg.max_text_len_of_initckpt} ({config_by}); "
        "width, depth, patch size, MLP width and layer scale from the weights"
    )
