"""BEiT-3 model directories: build a :class:`~vlmo_cli.model.beit3.Beit3` from a state dict, load one from a directory.

A BEiT-3 directory is a model directory (config.json + model.safetensors) whose config carries ``"family": "beit3"``;
it is written with :func:`vlmo_cli.model.io.save_model` like every model directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from .beit3 import Beit3
from .beit3_config import Beit3Config, is_beit3_config
from .io import CONFIG_NAME, WEIGHTS_NAME, load_state_dict_checked, read_weights, resolve_model_dir


def build_beit3(state: dict[str, torch.Tensor], cfg: Beit3Config, source: str, strict: bool = True,
                **config_overrides) -> Beit3:
    """A :class:`Beit3` of ``cfg`` holding ``state``; ``image_size`` among ``config_overrides`` resizes the image
    position table, other overrides must not change a weight's shape."""
    if config_overrides:
        from ..interop.beit3 import adapt_state

        new = cfg.replace(**config_overrides)
        state, cfg = adapt_state(state, cfg, new), new
    if strict:  # every weight comes from ``state``: skip the random initialisation
        with torch.device("meta"):
            model = Beit3(cfg).to_empty(device="cpu")
    else:
        model = Beit3(cfg)
    load_state_dict_checked(model, state, source=source, strict=strict)
    return model


def is_beit3_dir(path: str | Path) -> bool:
    """Whether ``path`` resolves to a model directory whose config is a BEiT-3 one."""
    try:
        data = json.loads((resolve_model_dir(path) / CONFIG_NAME).read_text())
    except (CheckpointError, OSError, json.JSONDecodeError):
        return False
    return is_beit3_config(data)


def load_beit3(path: str | Path, device: str | torch.device = "cpu", **config_overrides) -> Beit3:
    """Load a BEiT-3 model directory (or run folder / ``latest`` pointer resolving to one)."""
    directory = resolve_model_dir(path)
    try:
        cfg = Beit3Config.load(directory / CONFIG_NAME)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    return build_beit3(read_weights(directory / WEIGHTS_NAME), cfg, str(directory), **config_overrides).to(device)
