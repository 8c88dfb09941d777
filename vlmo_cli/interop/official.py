"""Official VLMo checkpoints (microsoft/unilm ``vlmo/``): read, infer the architecture, convert to a model directory.

Our parameter names are the official ones, so conversion is: pick the state dict out of the container (Lightning
``state_dict``, DeepSpeed ``module``, ``model`` or bare), drop the keys that carry no weights, infer the
:class:`ModelConfig` from the tensor shapes (and the stored ``hyper_parameters.config`` when present), optionally
resize position information to another resolution, and load with every mismatch reported by name.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..model.config import ModelConfig
from ..model.io import build_model, save_model, vocab_files
from ..safe_load import load_torch_file

#: keys of official checkpoints that carry no weights (buffers of the old transformers, index tensors)
IGNORED_KEYS = (
    "text_embeddings.position_ids",
    "relative_position_index",
    "text_relative_position_index",
    "text_imag_relative_position_index",
)

#: heads of official size names when the weights cannot tell (base_plus has no relative-position table)
_OFFICIAL_HEADS = {"vlmo_base_patch16": 12, "vlmo_base_plus_patch16": 16, "vlmo_large_patch16": 16}


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Return ``(state_dict, official_config_or_None)``; never executes pickled code."""
    obj = load_torch_file(path, "checkpoint")
    config = None
    if isinstance(obj, dict) and isinstance(obj.get("hyper_parameters"), dict):
        config = obj["hyper_parameters"].get("config")
    state = obj
    for container in ("state_dict", "module", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(container), dict):
            state = obj[container]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state dict of tensors found (looked for state_dict, module, model)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, config if isinstance(config, dict) else None


def infer_config(state: dict[str, torch.Tensor], official: dict[str, Any] | None = None, source: str = "") -> ModelConfig:
    """Infer the architecture of an official state dict (shapes first, the stored config for what shapes cannot tell)."""
    official = official or {}
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
    dim = state["transformer.cls_token"].shape[-1]
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"transformer\.blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    vl_blocks = [i for i in blocks if f"transformer.blocks.{i}.mlp_vl.fc1.weight" in state]
    vlffn_start = min(vl_blocks) if vl_blocks else depth
    patch = state["transformer.patch_embed.proj.weight"].shape[-1]
    mlp_hidden = state["transformer.blocks.0.mlp_text.fc1.weight"].shape[0]
    table = state.get("relative_position_bias_table")
    text_table_len = int(official.get("max_text_len_of_initckpt", 196))
    arch = str(official.get("model_arch", ""))
    if table is not None:
        num_heads = table.shape[1] // depth
        image_rows = table.shape[0] - 2 * text_table_len - 2 - 3
        grid = (math.isqrt(image_rows) + 1) // 2
        if (2 * grid - 1) ** 2 != image_rows:
            raise CheckpointError(f"{source}: relative_position_bias_table has {table.shape[0]} rows, not a VLMo layout")
    else:
        num_heads = _OFFICIAL_HEADS.get(arch, 16 if dim == 544 else max(1, dim // 64))
        grid = math.isqrt(state["transformer.pos_embed"].shape[1] - 1)
    image_size = int(official.get("image_size", grid * patch))
    if image_size != grid * patch:
        image_size = grid * patch  # the weights decide; the stored config may describe another run
    heads = []
    if "pooler.dense.weight" in state:
        heads.append("pooler")
    if "itc_text_proj.fc.weight" in state:
        heads.append("itc")
    if "itc_vl_text_proj.fc.weight" in state:
        heads.append("itc_vl")
    for name, key in (("itm", "itm_score.fc.weight"), ("mlm", "mlm_score.decoder.weight"),
                      ("vqa", "vqa_classifier.0.weight"), ("nlvr2", "nlvr2_classifier.0.weight")):
        if key in state:
            heads.append(name)
    return ModelConfig(
        image_size=image_size,
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_hidden / dim,
        vlffn_start=vlffn_start,
        layer_scale_init=0.1 if "transformer.blocks.0.gamma_1" in state else None,
        relative_position=table is not None,
        max_text_len=state["text_embeddings.position_embeddings.weight"].shape[0],
        max_text_len_of_initckpt=text_table_len,
        vocab_size=state["text_embeddings.word_embeddings.weight"].shape[0],
        drop_path_rate=float(official.get("drop_path_rate", 0.1)),
        num_modality_types=state["token_type_embeddings.weight"].shape[0],
        heads=heads,
        vqa_num_answers=state["vqa_classifier.3.weight"].shape[0] if "vqa" in heads else 3129,
        name=arch or "official",
    )


def load_official(path: str | Path, **config_overrides: Any):
    """Build a :class:`~vlmo_cli.model.vlmo.VLMo` from an official checkpoint file.

    ``config_overrides`` (e.g. ``image_size=384``) resize position information as the official loader does.
    """
    state, official = read_checkpoint(path)
    state = {k: v for k, v in state.items() if k not in IGNORED_KEYS}
    return build_model(state, infer_config(state, official, source=str(path)), str(path), **config_overrides)


def convert_official(
    checkpoint: str | Path, out_dir: str | Path, image_size: int | None = None, vocab: str | Path | None = None
) -> Path:
    """Convert an official checkpoint into a model directory (config.json, model.safetensors, tokenizer files)."""
    overrides = {"image_size": image_size} if image_size else {}
    model = load_official(checkpoint, **overrides)
    _, official = read_checkpoint(checkpoint)
    out = save_model(model, out_dir, extra_files=vocab_files(vocab), metadata={"source": f"official:{Path(checkpoint).name}"})
    if official is not None:
        (out / "official_config.json").write_text(json.dumps(official, indent=2, default=str) + "\n")
    return out
