"""vlmo_cli: VLMo (Mixture-of-Modality-Experts) as a library with a thin command line.

Public API (imported lazily so that ``vlmo --help`` does not pay for importing torch)::

    from vlmo_cli import VLMo, ModelConfig, get_config, load_model
    model = load_model("runs/demo/checkpoints/latest")          # or an official .pt checkpoint
    img = model.encode_image(pixels)                             # [B, D], L2-normalised (dual encoder)
    txt = model.encode_text(input_ids, attention_mask)           # [B, D]
    fused = model.encode_pair(input_ids, attention_mask, pixels) # pooled, text_features, image_features
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "VLMo": "vlmo_cli.model.vlmo",
    "PairOutput": "vlmo_cli.model.vlmo",
    "UnimodalOutput": "vlmo_cli.model.vlmo",
    "ContrastiveOutput": "vlmo_cli.model.vlmo",
    "ModelConfig": "vlmo_cli.model.config",
    "get_config": "vlmo_cli.model.config",
    "model_sizes": "vlmo_cli.model.config",
    "load_model": "vlmo_cli.factory",
    "save_model": "vlmo_cli.factory",
    "load_tokenizer": "vlmo_cli.data.tokenizer",
    "VlmoError": "vlmo_cli.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vlmo_cli' has no attribute {name!r}")
