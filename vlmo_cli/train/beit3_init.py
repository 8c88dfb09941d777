"""Initialising a BEiT-3 fine-tune (``[model] family = "beit3"``) from a BEiT-3 model directory (e.g. written by
``vlmo convert beit3``), a run folder or checkpoint of one, or a released BEiT-3 checkpoint file.

The backbone (text and vision embeddings, the encoder) must agree with the recipe's; the image position table is
resized to the recipe's resolution (bicubic, as the unilm loader); heads of other tasks are dropped and the task's
head is initialised fresh (unilm's initialisation). A backbone tensor the source lacks — e.g. the final LayerNorm of
a source trained for VQA, which has none — is an error unless the caller allows it; the report lists every tensor.
"""

from __future__ import annotations

from ..errors import CheckpointError
from ..factory import read_beit3_init_source
from ..interop.beit3 import adapt_state
from ..model.beit3 import Beit3
from .init import InitReport

#: architecture fields that must agree between a source and the BEiT-3 model it initialises
BEIT3_BACKBONE_FIELDS = ("embed_dim", "depth", "num_heads", "ffn_dim", "patch_size", "vocab_size",
                         "max_source_positions")
#: tensors of the backbone (everything else is a task head)
BEIT3_BACKBONE_PREFIXES = ("text_embed.", "vision_embed.", "encoder.")


def initialise_beit3(model: Beit3, source: str, allow_missing: bool = False) -> InitReport:
    """Load ``source`` into ``model`` (in place) and report where every tensor came from."""
    if not source:
        return InitReport(source="", fresh=sorted(model.state_dict()),
                          random_note="initialised at random (unilm's initialisation of the fine-tuning models)")
    cfg = model.config
    state, src_cfg = read_beit3_init_source(source, num_heads=cfg.num_heads)
    wrong = [f"{f} {getattr(src_cfg, f)} vs {getattr(cfg, f)}" for f in BEIT3_BACKBONE_FIELDS
             if getattr(src_cfg, f) != getattr(cfg, f)]
    if wrong:
        raise CheckpointError(f"{source}: backbone does not match the recipe's model ({'; '.join(wrong)})")
    state = adapt_state(state, src_cfg, cfg)
    own = model.state_dict()
    mismatched = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    backbone_mismatch = [k for k in mismatched if k.startswith(BEIT3_BACKBONE_PREFIXES)]
    if backbone_mismatch:
        raise CheckpointError(f"{source}: tensors of another shape: {backbone_mismatch[:5]}")
    load = {k: v for k, v in state.items() if k in own and k not in mismatched}
    report = InitReport(source=source, loaded=sorted(load), dropped=sorted(k for k in state if k not in own),
                        reshaped=mismatched)
    report.fresh = sorted(k for k in own if k not in load)
    unexpected = [k for k in report.fresh if k.startswith(BEIT3_BACKBONE_PREFIXES)]
    if unexpected and not allow_missing:
        shown = ", ".join(unexpected[:8]) + (f", … ({len(unexpected)} in all)" if len(unexpected) > 8 else "")
        raise CheckpointError(
            f"{source}: the source lacks {len(unexpected)} backbone tensors that this task does not initialise: "
            f"{shown}; pass --allow-missing-init to train them from random values")
    report.allowed_missing = unexpected
    model.load_state_dict(load, strict=False)
    return report
