"""The one-line summary ``vlmo convert beit3`` prints about the directory it wrote (read from its files)."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console


def beit3_summary(out: Path, console: Console) -> None:
    from safetensors import safe_open

    from ..model.beit3_config import Beit3Config
    from ..layout import CONFIG_NAME, WEIGHTS_NAME

    cfg = Beit3Config.load(out / CONFIG_NAME)
    with safe_open(str(out / WEIGHTS_NAME), framework="pt") as f:
        n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        inferred = (f.metadata() or {}).get("inferred")
    console.print(
        f"wrote {out}: BEiT-3 {cfg.depth}×{cfg.embed_dim}, {cfg.num_heads} heads, FFN {cfg.ffn_dim}, "
        f"{cfg.image_size}px, vocabulary {cfg.vocab_size}, final norm {'yes' if cfg.normalize_output else 'no'}, "
        f"heads {cfg.heads}, {n:,} weights",
        highlight=False, markup=False,
        soft_wrap=True,
    )
    if inferred:
        console.print(f"architecture: {inferred}", highlight=False, soft_wrap=True, markup=False)
