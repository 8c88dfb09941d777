"""Pure state-dict I/O of the network: read a safetensors weights file, the tensors to save, a :class:`VLMo` built
from a state dict and a config, and ``load_state_dict`` whose mismatches are named.

Where those files live and how a model directory is written is :mod:`vlmo_cli.layout` and :mod:`vlmo_cli.factory`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError
from .config import ModelConfig


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; an unreadable file is a :class:`CheckpointError`."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({exc})") from exc


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s tensors, detached, contiguous and on the CPU (what safetensors writes)."""
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def build_model(state: dict[str, torch.Tensor], cfg: ModelConfig, source: str, strict: bool = True, **config_overrides):
    """A :class:`VLMo` of ``cfg`` (with ``config_overrides`` applied, position information resized) holding ``state``."""
    from .resize import adapt_state_dict
    from .vlmo import VLMo

    if config_overrides:
        new_cfg = cfg.replace(**config_overrides)
        state = adapt_state_dict(state, cfg, new_cfg)
        cfg = new_cfg
    model = VLMo(cfg)
    load_state_dict_checked(model, state, source=source, strict=strict)
    return model


def few(items: list[str], n: int = 8) -> str:
    """``[a, b, ...] (N in all)``: the first ``n`` of ``items`` for a message."""
    shown = ", ".join(items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)} in all)"


def key_problems(missing: list[str], unexpected: list[str], shape: list[str] = ()) -> list[str]:
    """The parts of a "weights do not match" message: missing keys, unexpected keys, shape mismatches (each
    listed by :func:`few`), leaving out the empty ones."""
    problems = []
    if missing:
        problems.append(f"missing keys {few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {few(unexpected)}")
    if shape:
        problems.append(f"shape mismatches {few(list(shape))}")
    return problems


def load_state_dict_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True):
    """``load_state_dict`` whose mismatches become a :class:`CheckpointError` naming the keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = [f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    problems = key_problems(missing if strict else [], unexpected if strict else [], shape)
    if problems:
        raise CheckpointError(f"{source}: weights do not match the architecture: " + "; ".join(problems))
    model.load_state_dict(state, strict=strict)
    return missing, unexpected
