"""Initialising a stage's model from the previous stage, a released checkpoint or BEiT weights.

Sources (``[model] init`` or ``--from``): ``""`` (random, official init), a model directory, a run folder or one of its
checkpoints, ``official:PATH`` / a ``.pt`` file (official VLMo checkpoint), ``beit:PATH`` (BEiT weights).

Between stages the architecture of the backbone must agree; heads of other stages are dropped and new parts (a new
head, the VL experts entering at stage 3 when ``init_vlffn = "random"``) are initialised fresh. Any other backbone
tensor missing from the source is an error naming it, unless the caller allows it (``--allow-missing-init``). The
returned :class:`InitReport` lists every tensor: taken from the source, copied from another expert, or fresh.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from ..errors import CheckpointError
from ..factory import read_init_source
from ..model.resize import adapt_state_dict
from ..model.vlmo import VLMo

#: architecture fields that must agree between a source and the model it initialises
BACKBONE_FIELDS = ("embed_dim", "depth", "num_heads", "patch_size", "relative_position", "mlp_ratio")
#: tensors of the shared backbone (everything else is a task head, new to a stage where that head is new)
BACKBONE_PREFIXES = ("transformer.", "text_embeddings.", "token_type_embeddings.", "relative_position")


@dataclass
class InitReport:
    """Where every tensor of an initialised model came from.

    Attributes:
        source: the init source (``""``: everything at random).
        loaded: tensors taken from the source.
        copied: VL-expert tensor -> the source tensor it was copied from (``init_vlffn = "text"`` / ``"image"``).
        fresh: tensors initialised at random (new heads, VL experts, tensors of another shape in the source, and the
            missing backbone tensors the caller allowed).
        dropped: source tensors this stage does not use (heads of other stages).
        reshaped: head tensors of another shape in the source (re-initialised; also in ``fresh``).
        allowed_missing: the backbone tensors among ``fresh`` that only the caller's permission let through.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    copied: dict[str, str] = field(default_factory=dict)
    fresh: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)
    allowed_missing: list[str] = field(default_factory=list)
    random_note: str = ""

    def notes(self) -> list[str]:
        """The human-readable summary the run prints and logs."""
        if not self.source:
            return [self.random_note]
        notes = [f"initialised from {self.source}: {len(self.loaded)} tensors from the source"]
        if self.copied:
            notes.append(f"copied from other experts: {len(self.copied)} tensors ({_groups(self.copied)})")
        if self.fresh:
            notes.append(f"newly initialised: {len(self.fresh)} tensors ({_groups(self.fresh)})")
        if self.reshaped:
            notes.append(f"re-initialised (other shape in source): {', '.join(self.reshaped)}")
        if self.allowed_missing:
            notes.append(f"[yellow]missing from the source, initialised at random (--allow-missing-init):[/] "
                         f"{len(self.allowed_missing)} tensors ({_groups(self.allowed_missing)})")
        if self.dropped:
            notes.append(f"not used by this stage: {len(self.dropped)} tensors ({_groups(self.dropped)})")
        return notes

    def to_dict(self) -> dict:
        return asdict(self)


def _groups(keys) -> str:
    """Module names of ``keys`` for a summary (block experts by kind: ``mlp_vl``, ``attn`` …)."""
    return ", ".join(sorted({k.split(".")[3] if k.startswith("transformer.blocks.") else k.split(".")[0]
                             for k in keys}))


def expected_fresh(key: str, init_vlffn: str) -> bool:
    """Whether a stage may initialise ``key`` at random: a task head, or a VL expert under ``init_vlffn = "random"``."""
    if not key.startswith(BACKBONE_PREFIXES):
        return True
    return init_vlffn == "random" and "_vl." in key


def _copy_vl_experts(load: dict[str, torch.Tensor], missing: list[str], init_vlffn: str) -> dict[str, str]:
    """Fill missing VL-expert tensors from the text or image experts (in ``load``); returns target -> source key."""
    if init_vlffn not in ("text", "image"):
        return {}
    expert = "text" if init_vlffn == "text" else "imag"
    copied = {}
    for k in missing:
        if "_vl." in k:
            src_key = k.replace("mlp_vl.", f"mlp_{expert}.").replace("norm2_vl.", f"norm2_{expert}.")
            if src_key in load:
                load[k] = load[src_key].clone()
                copied[k] = src_key
    return copied


def initialise(model: VLMo, source: str, init_vlffn: str = "random", allow_missing: bool = False) -> InitReport:
    """Load ``source`` into ``model`` (in place) and report where every tensor came from.

    Raises:
        CheckpointError: the backbones differ, or backbone tensors the stage does not create are missing from the
            source (unless ``allow_missing``).
    """
    from ..model.beit3 import Beit3

    if isinstance(model, Beit3):  # the BEiT-3 family has its own backbone and heads
        from .beit3_init import initialise_beit3

        return initialise_beit3(model, source, allow_missing)
    if not source:
        std = model.config.init_std
        return InitReport(source="", fresh=sorted(model.state_dict()),
                          random_note=f"initialised at random ({'official initialisation' if std == 0.02 else f'init_std {std}'})")
    state, src_cfg = read_init_source(source, model.config)
    check_backbone(source, src_cfg, model.config, BACKBONE_FIELDS)
    state = adapt_state_dict(state, src_cfg, model.config)
    return load_init_state(model, state, source, ("transformer.", "text_embeddings.", "relative_position"),
                           lambda k: expected_fresh(k, init_vlffn), allow_missing,
                           copy_missing=lambda load, missing: _copy_vl_experts(load, missing, init_vlffn))


def check_backbone(source: str, src_cfg, cfg, fields: tuple[str, ...]) -> None:
    """The architecture ``fields`` of a source must equal the model's."""
    wrong = [f"{f} {getattr(src_cfg, f)} vs {getattr(cfg, f)}" for f in fields if getattr(src_cfg, f) != getattr(cfg, f)]
    if wrong:
        raise CheckpointError(f"{source}: backbone does not match the recipe's model ({'; '.join(wrong)})")


def load_init_state(model, state: dict, source: str, backbone_prefixes: tuple[str, ...],
                    is_expected_fresh: Callable[[str], bool], allow_missing: bool,
                    copy_missing: Callable[[dict, list[str]], list[str]] | None = None) -> InitReport:
    """Load the tensors of ``state`` that ``model`` has with the same shape (in place) and report the rest.

    Args:
        backbone_prefixes: names of backbone tensors: one of another shape is an error (a head's is re-made).
        is_expected_fresh: whether a tensor the source lacks is one the stage creates (heads, new experts).
        allow_missing: train the other missing tensors from random values instead of refusing.
        copy_missing: fills some missing tensors from loaded ones (in ``load``); returns their names.
    """
    own = model.state_dict()
    mismatched = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    backbone_mismatch = [k for k in mismatched if k.startswith(backbone_prefixes)]
    if backbone_mismatch:
        raise CheckpointError(f"{source}: tensors of another shape: {backbone_mismatch[:5]}")
    load = {k: v for k, v in state.items() if k in own and k not in mismatched}
    report = InitReport(source=source, loaded=sorted(load), dropped=sorted(k for k in state if k not in own),
                        reshaped=mismatched)
    missing = sorted(k for k in own if k not in load)
    report.copied = copy_missing(load, missing) if copy_missing else []
    report.fresh = [k for k in missing if k not in report.copied]
    unexpected = [k for k in report.fresh if not is_expected_fresh(k)]
    if unexpected and not allow_missing:
        shown = ", ".join(unexpected[:8]) + (f", … ({len(unexpected)} in all)" if len(unexpected) > 8 else "")
        raise CheckpointError(
            f"{source}: the source lacks {len(unexpected)} backbone tensors that this stage does not initialise: "
            f"{shown}; pass --allow-missing-init to train them from random values")
    report.allowed_missing = unexpected
    model.load_state_dict(load, strict=False)
    return report
