"""The one builder of a stage's model: the training loop and ``vlmo bench`` both call :func:`build_stage`, so what
the benchmark times is, by construction, what trains.

The steps, in this order: the stage's architecture (heads, VL experts, answer and class counts of the prepared data),
the network, its weights (a callback: init or resume), the frozen parameters, activation checkpointing, the device,
AdamW, the step module (the objective inside ``forward``) and ``torch.compile``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..model.beit3 import Beit3
from ..model.config import ModelConfig
from ..model.vlmo import VLMo
from .beit3_stages import BEIT3_STAGE_DEFS, beit3_stage_config
from .optim import build_optimizer
from .padding import COMPILED_LENGTH_BUCKETS, trim_to_longest
from .stages import STAGE_DEFS, StageDef, StepOutput, stage_config


class StageModule(nn.Module):
    """Runs a stage's objective inside ``forward`` so that DDP sees one forward per backward.

    Args:
        model: the model.
        stage_def: the stage or task.
        task: its recipe settings.
        trim_padding: drop text columns that are padding in every row first (exact; off only to measure it).
        length_buckets: round the trimmed length up to one of this many lengths (set when the step is compiled).
    """

    def __init__(self, model: VLMo, stage_def: StageDef, task: Any, trim_padding: bool = True,
                 length_buckets: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.stage_def = stage_def
        self.task = task
        self.trim_padding = trim_padding
        self.length_buckets = length_buckets

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.trim_padding:
            batch = trim_to_longest(batch, self.length_buckets)
        out: StepOutput = self.stage_def.objective(self.model, batch, self.task)
        return out.loss, out.metrics


#: ``(model, stage_def, task, length_buckets) -> step module``; the default is :class:`StageModule`
ModuleFactory = Callable[[VLMo, StageDef, Any, "int | None"], nn.Module]


def stage_module(model: VLMo, stage_def: StageDef, task: Any, length_buckets: int | None) -> nn.Module:
    return StageModule(model, stage_def, task, length_buckets=length_buckets)


def stage_def_of(stage) -> StageDef:
    """The :class:`StageDef` of a resolved recipe ``stage`` in its model family (``[model] family``): the one place
    where the family chooses the objectives and heads of a stage."""
    if stage.model.family == "beit3":
        if stage.name not in BEIT3_STAGE_DEFS:
            from ..errors import RecipeError

            raise RecipeError(f"{stage.source}: [{stage.name}] does not train a BEiT-3 model (family = \"beit3\"); "
                              f"BEiT-3 trains: {', '.join(BEIT3_STAGE_DEFS)}")
        return BEIT3_STAGE_DEFS[stage.name]
    return STAGE_DEFS[stage.name]


def stage_config_of(stage, open_dataset: Callable[[], object | None]) -> ModelConfig | Any:
    """The config of the model a resolved recipe ``stage`` trains, in its model family."""
    if stage.model.family == "beit3":
        return beit3_stage_config(stage, stage_def_of(stage), open_dataset)
    return stage_config(stage, open_dataset)


def stage_network(stage, open_dataset: Callable[[], object | None]) -> tuple[Any, nn.Module]:
    """``(config, freshly initialised network)`` of the stage in its model family."""
    cfg = stage_config_of(stage, open_dataset)
    return cfg, (Beit3 if stage.model.family == "beit3" else VLMo)(cfg)


@dataclass
class StageParts:
    """What :func:`build_stage` returns: the architecture, the stage, the network, the step module (compiled when
    asked) and its optimizer; ``fused`` = whether AdamW runs its fused kernel."""

    cfg: ModelConfig | Any
    stage_def: StageDef
    model: VLMo | Beit3
    module: nn.Module
    optimizer: torch.optim.Optimizer
    fused: bool


def build_stage(
    stage,
    device: torch.device,
    open_dataset: Callable[[], object | None],
    *,
    load_weights: Callable[[VLMo], None] | None = None,
    fused_adamw: bool | None = None,
    compile: bool | None = None,
    make_module: ModuleFactory = stage_module,
    reuse: StageParts | None = None,
) -> StageParts:
    """Build the model, step module and optimizer of a resolved recipe ``stage`` (of kind ``train``) on ``device``.

    Args:
        stage: a :class:`~vlmo_cli.config.schema.ResolvedStage`.
        device: where the model lives.
        open_dataset: opens the stage's prepared data when the answer or class count is needed (``None`` back:
            no prepared data, the recipe's ``[model]`` counts stay).
        load_weights: puts the starting weights into the fresh model (init or resume); random weights without it.
        fused_adamw: ``None`` = the recipe's ``train.fused_adamw`` (``auto`` = on CUDA).
        compile: ``None`` = the recipe's ``train.compile``; the trimmed text length is then bucketed.
        make_module: builds the step module (the benchmark's reference oracle comes in here).
        reuse: parts of the same stage whose model (and optimizer, when the fused switch agrees) are taken as they
            are, so that several configurations of a big model fit in memory side by side.
    """
    stage_def, task, tcfg = stage_def_of(stage), stage.task, stage.train
    if fused_adamw is None:
        fused_adamw = tcfg.fused_adamw if isinstance(tcfg.fused_adamw, bool) else device.type == "cuda"
    compiled = tcfg.compile if compile is None else compile
    if reuse is not None:
        if reuse.stage_def.name != stage.name:
            raise ValueError(f"parts of {reuse.stage_def.name} cannot serve {stage.name}")
        cfg, model = reuse.cfg, reuse.model
        optimizer = reuse.optimizer if reuse.fused == fused_adamw else build_optimizer(model, tcfg, fused=fused_adamw)
    else:
        cfg, model = stage_network(stage, open_dataset)
        if load_weights is not None:
            load_weights(model)
        for name, p in model.named_parameters():
            if not stage_def.trainable(name, cfg, task):
                p.requires_grad_(False)
        if tcfg.activation_checkpointing:
            model.set_grad_checkpointing(True)
        model.to(device)
        optimizer = build_optimizer(model, tcfg, fused=fused_adamw)
    module = make_module(model, stage_def, task, COMPILED_LENGTH_BUCKETS if compiled else None)
    if compiled:
        module = torch.compile(module)
    return StageParts(cfg, stage_def, model, module, optimizer, fused_adamw)
