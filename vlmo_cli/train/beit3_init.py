"""Initialising a BEiT-3 fine-tune (``[model] family = "beit3"``) from a BEiT-3 model directory (e.g. written by
``vlmo convert beit3``), a run folder or checkpoint of one, or a released BEiT-3 checkpoint file.

The backbone (text and vision embeddings, the encoder) must agree with the recipe's; the image position table is
resized to the recipe's resolution (bicubic, as the unilm loader); heads of other tasks are dropped and the task's
head is initialised fresh (unilm's initialisation). A backbone tensor the source lacks — e.g. the final LayerNorm of
a source trained for VQA, which has none — is an error unless the caller allows it; the report lists every tensor.
"""

from __future__ import annotations

from ..factory import read_beit3_init_source
from ..interop.beit3 import adapt_state
from ..model.beit3 import Beit3
from .init import InitReport, check_backbone, load_init_state

#: architecture fields that must agree between a source and the BEiT-3 model it initialises
BEIT3_BACKBONE_FIELDS = ("embed_dim", "depth", "num_heads", "ffn_dim", "patch_size", "vocab_size",
                         "max_source_positions")
#: tensors of the backbone (everything else is a task head)
BEIT3_BACKBONE_PREFIXES = ("text_embed.", "vision_embed.", "encoder.")


def initialise_beit3(model: Beit3, source: str, allow_missing: bool = False) -> InitReport:
    """Load ``source`` into ``model`` (in place) and report where every tensor came from."""
    if not source:
        scheme = ("unilm's initialisation of the fine-tuning models" if model.config.init == "unilm"
                  else "torchscale's initialisation of the BEiT3 module")
        return InitReport(source="", fresh=sorted(model.state_dict()), random_note=f"initialised at random ({scheme})")
    state, src_cfg = read_beit3_init_source(source, num_heads=model.config.num_heads)
    check_backbone(source, src_cfg, model.config, BEIT3_BACKBONE_FIELDS)
    state = adapt_state(state, src_cfg, model.config)
    return load_init_state(model, state, source, BEIT3_BACKBONE_PREFIXES,
                           lambda k: not k.startswith(BEIT3_BACKBONE_PREFIXES), allow_missing)
