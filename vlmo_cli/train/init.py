"""Initialising a stage's model from the previous stage, a released checkpoint or BEiT weights.

Sources (``[model] init`` or ``--from``): ``""`` (random, official init), a model directory, a run folder or one of its
checkpoints, ``official:PATH`` / a ``.pt`` file (official VLMo checkpoint), ``beit:PATH`` (BEiT weights).

Between stages the architecture of the backbone must agree; heads of other stages are dropped and new parts (a new
head, the VL experts entering at stage 3) are initialised fresh, each listed in the returned notes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError
from ..model.config import ModelConfig
from ..model.io import CONFIG_NAME, WEIGHTS_NAME, read_weights, resolve_model_dir
from ..model.resize import adapt_state_dict
from ..model.vlmo import VLMo

#: architecture fields that must agree between a source and the model it initialises
BACKBONE_FIELDS = ("embed_dim", "depth", "num_heads", "patch_size", "relative_position", "mlp_ratio")


def read_source(source: str, target: ModelConfig) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """``(state_dict, its config)`` of an init source."""
    if source.startswith("beit:"):
        from ..interop.beit import convert_beit

        model = convert_beit(source[len("beit:"):], target)
        return model.state_dict(), model.config
    path = source[len("official:"):] if source.startswith("official:") else source
    if Path(path).is_file():
        from ..interop.official import IGNORED_KEYS, infer_config, read_checkpoint

        state, official = read_checkpoint(path)
        state = {k: v for k, v in state.items() if k not in IGNORED_KEYS}
        # what the weights cannot tell (heads without a relative table, the table's text rows) is the recipe's
        return state, infer_config(state, official, source=path, num_heads=target.num_heads,
                                   text_table_len=target.max_text_len_of_initckpt, given_by="recipe")
    model_dir = resolve_model_dir(path)
    return read_weights(model_dir / WEIGHTS_NAME), ModelConfig.load(model_dir / CONFIG_NAME)


def initialise(model: VLMo, source: str, init_vlffn: str = "random") -> list[str]:
    """Load ``source`` into ``model`` (in place); returns human-readable notes on what was dropped or created."""
    if not source:
        std = model.config.init_std
        return [f"initialised at random ({'official initialisation' if std == 0.02 else f'init_std {std}'})"]
    state, src_cfg = read_source(source, model.config)
    cfg = model.config
    wrong = [f"{f} {getattr(src_cfg, f)} vs {getattr(cfg, f)}" for f in BACKBONE_FIELDS if getattr(src_cfg, f) != getattr(cfg, f)]
    if wrong:
        raise CheckpointError(f"{source}: backbone does not match the recipe's model ({'; '.join(wrong)})")
    state = adapt_state_dict(state, src_cfg, cfg)
    own = model.state_dict()
    notes = []
    dropped = sorted(k for k in state if k not in own)
    if dropped:
        heads = sorted({k.split(".")[0] for k in dropped})
        notes.append(f"not used by this stage: {len(dropped)} tensors ({', '.join(heads)})")
    mismatched = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    backbone_mismatch = [k for k in mismatched if k.startswith(("transformer.", "text_embeddings.", "relative_position"))]
    if backbone_mismatch:
        raise CheckpointError(f"{source}: tensors of another shape: {backbone_mismatch[:5]}")
    if mismatched:
        notes.append(f"re-initialised (other shape in source): {', '.join(mismatched)}")
    load = {k: v for k, v in state.items() if k in own and k not in mismatched}
    missing = sorted(k for k in own if k not in load)
    if init_vlffn in ("text", "image"):
        expert = "text" if init_vlffn == "text" else "imag"
        copied = 0
        for k in list(missing):
            if "_vl." in k:
                src_key = k.replace("mlp_vl.", f"mlp_{expert}.").replace("norm2_vl.", f"norm2_{expert}.")
                if src_key in load:
                    load[k] = load[src_key].clone()
                    missing.remove(k)
                    copied += 1
        if copied:
            notes.append(f"VL experts initialised from the {init_vlffn} experts ({copied} tensors)")
    model.load_state_dict(load, strict=False)
    if missing:
        parts = sorted({k.split(".")[0] if not k.startswith("transformer.blocks.") else k.split(".")[3] for k in missing})
        notes.append(f"newly initialised: {len(missing)} tensors ({', '.join(parts)})")
    return [f"initialised from {source}"] + notes
