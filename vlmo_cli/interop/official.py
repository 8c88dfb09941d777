"""Official VLMo checkpoints (microsoft/unilm ``vlmo/``) as pure functions: a file → (state dict, :class:`ModelConfig`).

Our parameter names are the official ones, so conversion is: pick the state dict out of the container (Lightning
``state_dict``, DeepSpeed ``module``, ``model`` or bare), drop the keys that carry no weights, infer the
:class:`ModelConfig` from the tensor shapes, optionally resize position information to another resolution, and load
with every mismatch reported by name (the last two steps, and writing a model directory, are
:mod:`vlmo_cli.factory`'s). What no shape fixes is read from the stored ``hyper_parameters.config``
(``model_arch``, ``max_text_len_of_initckpt``) or given by the caller, never guessed (:func:`infer_architecture`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from ..model.config import OFFICIAL_ARCHS, ModelConfig, get_config
from ..model.position import num_table_rows
from ..safe_load import load_torch_file

#: keys of official checkpoints that carry no weights (buffers of the old transformers, index tensors)
IGNORED_KEYS = (
    "text_embeddings.position_ids",
    "relative_position_index",
    "text_relative_position_index",
    "text_imag_relative_position_index",
)


#: the keys of checkpoint containers that hold the state dict (Lightning, DeepSpeed, plain ``{"model": ...}``)
CONTAINERS = ("state_dict", "module", "model")


def unwrap_state_dict(obj: Any) -> Any:
    """The state dict inside a checkpoint container (the first of :data:`CONTAINERS` holding a dict, else ``obj``
    itself), with DistributedDataParallel's ``module.`` prefix removed from its keys."""
    state = obj
    if isinstance(obj, dict):
        for container in CONTAINERS:
            if isinstance(obj.get(container), dict):
                state = obj[container]
                break
    if isinstance(state, dict):
        state = {k.removeprefix("module.") if isinstance(k, str) else k: v for k, v in state.items()}
    return state


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Return ``(state_dict, official_config_or_None)``; never executes pickled code."""
    obj = load_torch_file(path, "checkpoint")
    config = None
    if isinstance(obj, dict) and isinstance(obj.get("hyper_parameters"), dict):
        config = obj["hyper_parameters"].get("config")
    state = unwrap_state_dict(obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state dict of tensors found (looked for {', '.join(CONTAINERS)})")
    return state, config if isinstance(config, dict) else None


#: how each inferred field was determined (shown in the conversion summary, stored with the converted weights)
Sources = dict[str, str]


@dataclass
class Inferred:
    """The architecture of a checkpoint and, for each field the weights alone do not fix, where its value came from."""

    config: ModelConfig
    sources: Sources

    def describe(self) -> str:
        """``num_heads 4 (option --num-heads), ...; the rest from the weights``."""
        parts = [f"{name} {getattr(self.config, name)} ({how})" for name, how in self.sources.items()]
        return "; ".join(parts + ["every other field from the weights"])


def _official_arch(arch: str, dim: int, depth: int, relative: bool) -> ModelConfig | None:
    """The registered config of an official ``model_arch`` name, if the weights have its width, depth and positions."""
    size = OFFICIAL_ARCHS.get(arch)
    if size is None:
        return None
    cfg = get_config(size)
    return cfg if (cfg.embed_dim, cfg.depth, cfg.relative_position) == (dim, depth, relative) else None


def _arch_note(arch: str) -> str:
    if not arch:
        return "the checkpoint names no model_arch"
    if arch not in OFFICIAL_ARCHS:
        return f"its model_arch {arch!r} is not an official architecture ({', '.join(OFFICIAL_ARCHS)})"
    return f"its model_arch {arch!r} does not have the width and depth of these weights"


#: the command-line options that state a field the checkpoint cannot tell
OPTIONS = {"num_heads": "--num-heads", "max_text_len_of_initckpt": "--text-table-len"}


def _label(name: str, given_by: str) -> str:
    """Where a given value came from, as messages and sources say it: ``option --num-heads``, ``recipe num_heads``."""
    return f"option {OPTIONS[name]}" if given_by == "option" else f"{given_by} {name}"


def _given(name: str, value: int | None, given_by: str, found: int | None, found_how: str, source: str) -> int | None:
    """A value passed by the caller, refused when it contradicts what the checkpoint says."""
    if value is not None and found is not None and value != found:
        raise CheckpointError(
            f"{source}: {_label(name, given_by)} {value} contradicts the checkpoint ({name} {found} from {found_how})"
        )
    return value


def _infer_heads(state, depth: int, dim: int, arch: str, num_heads: int | None, given_by: str, source: str):
    """``(num_heads, how)``: the relative-position table's columns, else an official ``model_arch``, else the caller."""
    table = state.get("relative_position_bias_table")
    if table is not None:
        found, how = table.shape[1] // depth, "weights"
    else:
        official = _official_arch(arch, dim, depth, relative=False)
        found, how = (official.num_heads, f"model_arch {arch}") if official else (None, "")
    if _given("num_heads", num_heads, given_by, found, how, source) is not None and found is None:
        return num_heads, _label("num_heads", given_by)
    if found is None:
        raise CheckpointError(
            f"{source}: cannot infer the number of attention heads: the weights use absolute positions (no "
            f"relative-position table, so no shape holds the head count) and {_arch_note(arch)}; "
            f"pass --num-heads N (a divisor of the width {dim}) to `vlmo convert official`"
        )
    return found, how


def _table_layouts(rows: int, min_text_len: int) -> list[tuple[int, int]]:
    """Every ``(image grid, max_text_len_of_initckpt)`` giving a shared table of ``rows`` rows."""
    out, grid = [], 1
    while num_table_rows(grid, min_text_len) <= rows:
        rest = rows - num_table_rows(grid, 0)
        if rest % 2 == 0:
            out.append((grid, rest // 2))
        grid += 1
    return out


def index_grid(state: dict[str, torch.Tensor]) -> int | None:
    """The image grid ``W`` of the stored ``relative_position_index`` buffer (``[W*W + 1, W*W + 1]``), if saved."""
    index = state.get("relative_position_index")
    if index is None or index.dim() != 2:
        return None
    grid = math.isqrt(index.shape[0] - 1)
    return grid if grid * grid + 1 == index.shape[0] else None


def _infer_table_layout(rows: int, max_text_len: int, official: dict[str, Any], text_table_len: int | None,
                        given_by: str, source: str, grid_of_index: int | None = None) -> tuple[int, int, str]:
    """``(grid, max_text_len_of_initckpt, how)`` of a relative-position table: its rows are ``(2W-1)^2 + 3`` image
    buckets plus ``2T + 2`` text buckets, so the weights fix the pair only when one layout fits, or when the saved
    ``relative_position_index`` buffer gives the image grid ``W``."""
    layouts = _table_layouts(rows, max_text_len)
    if not layouts:
        raise CheckpointError(f"{source}: relative_position_bias_table has {rows} rows, not a VLMo layout")
    by_text = {t: g for g, t in layouts}
    stored = official.get("max_text_len_of_initckpt")
    fits = isinstance(stored, int) and stored in by_text
    found, how = (stored, "checkpoint config") if fits else (None, "")
    by_index = [t for g, t in layouts if g == grid_of_index]
    if found is None and len(layouts) == 1:
        found, how = layouts[0][1], "weights"
    elif found is None and len(by_index) == 1:
        found, how = by_index[0], "weights (relative_position_index gives the image grid)"
    option = _label("max_text_len_of_initckpt", given_by)
    value = _given("max_text_len_of_initckpt", text_table_len, given_by, found, how, source)
    if value is not None and found is None:
        if value not in by_text:
            raise CheckpointError(
                f"{source}: {option} {value} does not fit the relative_position_bias_table ({rows} rows); "
                f"values that fit: {sorted(by_text)[:6]}{' ...' if len(by_text) > 6 else ''}"
            )
        found, how = value, option
    if found is None:
        raise CheckpointError(
            f"{source}: cannot infer the text length the relative-position table was built for "
            f"(max_text_len_of_initckpt): its {rows} rows fit {len(layouts)} image-grid/text-length layouts and "
            + ("the checkpoint stores no config saying which" if stored is None else
               f"the stored max_text_len_of_initckpt {stored!r} fits none of them")
            + "; pass --text-table-len N to `vlmo convert official` (the official configs use 196)"
        )
    return by_text[found], found, how


def infer_architecture(
    state: dict[str, torch.Tensor],
    official: dict[str, Any] | None = None,
    source: str = "",
    num_heads: int | None = None,
    text_table_len: int | None = None,
    given_by: str = "option",
    grid_of_index: int | None = None,
) -> Inferred:
    """The :class:`ModelConfig` of an official state dict, never guessed.

    Shapes fix everything except two fields: the head count of an absolute-position checkpoint (taken from an
    official ``model_arch`` stored in the checkpoint, else ``num_heads``) and, for a relative-position table, the
    split of its rows between the image grid and the text offsets (taken from the stored
    ``max_text_len_of_initckpt``, else ``text_table_len``). A field that stays unknown is a :class:`CheckpointError`
    naming the option to pass; a given value that contradicts the checkpoint is one too. ``given_by`` names where
    given values come from in messages and sources (``"option"``: the ``--num-heads``/``--text-table-len`` options).
    """
    official = official or {}
    _check_keys(state, source)
    dim = state["transformer.cls_token"].shape[-1]
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"transformer\.blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    vl_blocks = [i for i in blocks if f"transformer.blocks.{i}.mlp_vl.fc1.weight" in state]
    patch = state["transformer.patch_embed.proj.weight"].shape[-1]
    max_text_len = state["text_embeddings.position_embeddings.weight"].shape[0]
    arch = str(official.get("model_arch", "") or "")
    table = state.get("relative_position_bias_table")
    sources: Sources = {}
    heads_value, sources["num_heads"] = _infer_heads(state, depth, dim, arch, num_heads, given_by, source)
    text_table = ModelConfig.max_text_len_of_initckpt  # sizes nothing without a relative-position table
    if table is not None:
        grid, text_table, sources["max_text_len_of_initckpt"] = _infer_table_layout(
            table.shape[0], max_text_len, official, text_table_len, given_by, source,
            grid_of_index if grid_of_index is not None else index_grid(state))
    else:
        grid = math.isqrt(state["transformer.pos_embed"].shape[1] - 1)
    drop_path = official.get("drop_path_rate")
    drop_path = drop_path if isinstance(drop_path, (int, float)) and not isinstance(drop_path, bool) else None
    sources["drop_path_rate"] = "checkpoint config" if drop_path is not None else "default; training only"
    try:
        config = ModelConfig(
            image_size=grid * patch,
            patch_size=patch,
            embed_dim=dim,
            depth=depth,
            num_heads=heads_value,
            mlp_ratio=state["transformer.blocks.0.mlp_text.fc1.weight"].shape[0] / dim,
            vlffn_start=min(vl_blocks) if vl_blocks else depth,
            layer_scale_init=0.1 if "transformer.blocks.0.gamma_1" in state else None,
            relative_position=table is not None,
            max_text_len=max_text_len,
            max_text_len_of_initckpt=text_table,
            vocab_size=state["text_embeddings.word_embeddings.weight"].shape[0],
            drop_path_rate=0.1 if drop_path is None else float(drop_path),
            num_modality_types=state["token_type_embeddings.weight"].shape[0],
            heads=_present_heads(state),
            vqa_num_answers=state["vqa_classifier.3.weight"].shape[0] if "vqa_classifier.3.weight" in state else 3129,
            name=arch or "official",
        )
    except ConfigError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc
    return Inferred(config, sources)


def infer_config(state: dict[str, torch.Tensor], official: dict[str, Any] | None = None, source: str = "",
                 **given: Any) -> ModelConfig:
    """:func:`infer_architecture` without the sources."""
    return infer_architecture(state, official, source, **given).config


def _check_keys(state: dict[str, torch.Tensor], source: str) -> None:
    if "transformer.cls_token" not in state or "transformer.patch_embed.proj.weight" not in state:
        raise CheckpointError(
            f"{source}: not a VLMo checkpoint (no transformer.cls_token / transformer.patch_embed.proj.weight); "
            f"first keys: {list(state)[:5]}"
        )
    required = ["transformer.blocks.0.mlp_text.fc1.weight", "text_embeddings.position_embeddings.weight",
                "text_embeddings.word_embeddings.weight", "token_type_embeddings.weight"]
    if "relative_position_bias_table" not in state:
        required.append("transformer.pos_embed")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{source}: weights do not match the VLMo architecture: missing keys [{', '.join(missing)}]")


def _present_heads(state: dict[str, torch.Tensor]) -> list[str]:
    keys = (("pooler", "pooler.dense.weight"), ("itc", "itc_text_proj.fc.weight"),
            ("itc_vl", "itc_vl_text_proj.fc.weight"), ("itm", "itm_score.fc.weight"),
            ("mlm", "mlm_score.decoder.weight"), ("vqa", "vqa_classifier.0.weight"),
            ("nlvr2", "nlvr2_classifier.0.weight"))
    return [name for name, key in keys if key in state]


def read_official(path: str | Path, num_heads: int | None = None, text_table_len: int | None = None):
    """``(state_dict without the weightless keys, stored config or None, Inferred)`` of an official checkpoint."""
    state, official = read_checkpoint(path)
    grid = index_grid(state)  # the index buffers carry no weights, but their shape fixes the image grid
    state = {k: v for k, v in state.items() if k not in IGNORED_KEYS}
    inferred = infer_architecture(state, official, str(path), num_heads=num_heads, text_table_len=text_table_len,
                                  grid_of_index=grid)
    return state, official, inferred
