"""The Accelerator of a training run, made from the recipe: plain / DDP, or FSDP2 (``fully_shard``) with
``train.fsdp = true``.

Under FSDP every MoME block is one sharding unit and the rest of the model (embeddings, heads, temperatures) belongs
to the root unit; parameters, gradients and optimizer state are sharded over the processes. Checkpoints stay the
same files as without FSDP: ``model.safetensors`` holds the full weights (gathered from every process) and the
optimizer state is gathered too, stored per parameter *name* (so a run resumes with any number of processes).

Accelerate 1.16 turns FSDP on only for GPU (and other accelerator) process groups; on a CPU process group it would
silently fall back to DDP. torch's ``fully_shard`` itself runs on CPU over gloo, so on CPU the Accelerator's
distributed type is set to FSDP here (that is how the 2-process CPU test exercises the real FSDP path).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import RecipeError

#: the class every sharding unit is made of (one MoME block = attention + its modality experts)
WRAP_CLASSES = ("MoMEBlock",)

#: optimizer state stored by parameter name (the FSDP layout) rather than by parameter index
BY_NAME = "by_name"


def fsdp_plugin(tcfg):
    """Accelerate's FSDP2 plugin for the recipe's ``[train]`` settings."""
    from accelerate import FullyShardedDataParallelPlugin

    policy = None
    if tcfg.precision == "bf16":  # parameters gathered in bf16; gradients reduced in fp32
        policy = {"param_dtype": torch.bfloat16, "reduce_dtype": torch.float32}
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=list(WRAP_CLASSES),
        reshard_after_forward=tcfg.fsdp_reshard_after_forward,
        state_dict_type="FULL_STATE_DICT",
        mixed_precision_policy=policy,
        # the loop sets the model's own per-block checkpointing (train.activation_checkpointing)
        activation_checkpointing=False,
        cpu_ram_efficient_loading=False,
    )


def check_fsdp_settings(tcfg, source: str = "recipe") -> None:
    """Refuse the combinations the FSDP path does not support (and is not tested with)."""
    if not tcfg.fsdp:
        return
    if tcfg.precision == "fp16":
        raise RecipeError(f"{source}: train.fsdp = true with train.precision = \"fp16\" is not supported; "
                          "use \"bf16\" (or \"no\")")
    if tcfg.compile:
        raise RecipeError(f"{source}: train.fsdp = true with train.compile = true is not supported; "
                          "set one of them to false")


#: the oldest versions with FSDP2 in Accelerate's plugin and torch's public ``fully_shard`` (tested: 1.16 / 2.14.1)
MIN_ACCELERATE, MIN_TORCH = "1.6", "2.6"


def _release(version: str) -> tuple[int, ...]:
    """``"2.14.1+cpu"`` -> ``(2, 14, 1)`` (the leading numeric parts)."""
    import re

    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def check_fsdp_versions() -> None:
    import accelerate

    if _release(accelerate.__version__) < _release(MIN_ACCELERATE) or _release(torch.__version__) < _release(MIN_TORCH):
        raise RecipeError(f"train.fsdp = true needs accelerate >= {MIN_ACCELERATE} and torch >= {MIN_TORCH} "
                          f"(installed: accelerate {accelerate.__version__}, torch {torch.__version__})")


def make_accelerator(tcfg, *, log_with: list[str] | None = None, project_config=None, source: str = "recipe"):
    """The run's Accelerator. Without CUDA the processes of ``torchrun`` / ``accelerate launch`` form a gloo
    group on the CPU; with ``train.fsdp`` and more than one process the model is sharded with FSDP2 there too."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    check_fsdp_settings(tcfg, source)
    if tcfg.fsdp:
        check_fsdp_versions()
    plugin = fsdp_plugin(tcfg) if tcfg.fsdp else None
    cpu = not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=tcfg.precision, log_with=log_with or None,
                              project_config=project_config, cpu=cpu, fsdp_plugin=plugin)
    state = accelerator.state
    if plugin is not None and state.distributed_type == DistributedType.MULTI_CPU:
        from accelerate.state import PartialState

        # both shared states, as Accelerate does for GPUs (every new AcceleratorState copies PartialState's)
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        state.fsdp_plugin = plugin
    return accelerator


def uses_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def fsdp_note(tcfg, accelerator) -> str | None:
    """A line for the run's start: FSDP was asked for but there is nothing to shard over (one process)."""
    if tcfg.fsdp and not uses_fsdp(accelerator):
        return ("train.fsdp = true but this run has 1 process: nothing to shard, the model trains unsharded "
                "(launch with torchrun / accelerate launch for FSDP)")
    return None


#: attribute of a model whose scalar parameters were made 1-element vectors for FSDP
_SCALARS = "_fsdp_scalar_parameters"


def prepare_for_fsdp(model: torch.nn.Module) -> list[str]:
    """Make the model's scalar (0-d) parameters - the contrastive temperatures ``logit_scale`` and
    ``logit_vl_scale`` - 1-element vectors, which ``fully_shard`` requires (it refuses scalar parameters); the model
    uses them only by broadcasting, so its outputs are unchanged. Checkpoints keep them scalars (see
    :func:`checkpoint_payload`). Call before ``accelerator.prepare``; returns their names."""
    names = [n for n, p in model.named_parameters() if p.ndim == 0]
    for name in names:
        param = model.get_parameter(name)
        param.data = param.data.reshape(1)
    setattr(model, _SCALARS, names)
    return names


def _scalar_names(accelerator, module) -> set[str]:
    """Names (relative to the VLMo model) of the parameters :func:`prepare_for_fsdp` turned into vectors."""
    return set(getattr(accelerator.unwrap_model(module).model, _SCALARS, []))


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def full_model_state(accelerator, module) -> dict[str, torch.Tensor] | None:
    """The full weights of the VLMo model inside the prepared stage module, on the CPU. Under FSDP every process
    must call this (the shards are gathered); only the main process gets the tensors (the others None)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    unwrapped = accelerator.unwrap_model(module)
    state = get_model_state_dict(unwrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not accelerator.is_main_process:
        return None
    scalars = _scalar_names(accelerator, module)
    return {k: (v.reshape(()) if k in scalars else v).detach().contiguous() for k, v in _strip(state, "model.").items()}


def full_optimizer_state(accelerator, module, optimizer) -> dict[str, Any] | None:
    """The optimizer state keyed by parameter name, gathered on the main process (None elsewhere); every process
    must call this under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    unwrapped = accelerator.unwrap_model(module)
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer
    state = get_optimizer_state_dict(unwrapped, inner,
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not accelerator.is_main_process:
        return None
    scalars = {f"model.{n}" for n in _scalar_names(accelerator, module)}
    for name, per_param in state["state"].items():  # moments of the temperatures: scalars, like the weights
        if name in scalars:
            per_param.update({k: v.reshape(()) for k, v in per_param.items() if k != "step" and v.numel() == 1})
    return state


def load_optimizer_state(accelerator, module, optimizer, state: dict[str, Any]) -> None:
    """Load a by-name optimizer state (every process passes the full state; each keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    unwrapped = accelerator.unwrap_model(module)
    inner = getattr(optimizer, "optimizer", optimizer)
    shapes = {f"model.{n}": p.shape for n, p in accelerator.unwrap_model(module).model.named_parameters()}
    for name, per_param in state["state"].items():  # the temperatures' moments take the parameters' shape
        if name in shapes and len(shapes[name]) <= 1:
            per_param.update({k: v.reshape(shapes[name]) for k, v in per_param.items()
                              if k != "step" and v.numel() == 1 and shapes[name].numel() == 1})
    set_optimizer_state_dict(unwrapped, inner, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def plain_norm(norm):
    """A gradient norm as a plain tensor (FSDP's clipping returns a DTensor)."""
    from torch.distributed.tensor import DTensor

    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def sharded_grad_norm(parameters) -> torch.Tensor | None:
    """Total 2-norm of sharded (DTensor) gradients over every process."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    return plain_norm(torch.nn.utils.get_total_norm(grads, 2.0))


def checkpoint_payload(accelerator, module, optimizer):
    """What a checkpoint needs from a sharded run: ``(weights, optimizer_state, bad)`` with the full weights and the
    by-name optimizer state on the main process (None elsewhere) and the names of the weights holding NaN/inf (the
    same list on every process). Without FSDP: ``(None, None, [])`` (the checkpoint reads the model directly).
    Every process must call this."""
    if not uses_fsdp(accelerator):
        return None, None, []
    unwrapped = accelerator.unwrap_model(module)
    named = [(k.removeprefix("model."), _local(v)) for k, v in unwrapped.state_dict().items()]
    named = [(k, v) for k, v in named if v.is_floating_point()]
    flags = torch.stack([(~torch.isfinite(v)).sum() if v.numel() else torch.zeros((), dtype=torch.long)
                         for _, v in named]).to(accelerator.device)
    flags = accelerator.reduce(flags, "sum")  # every process's shards
    bad = [k for (k, _), n in zip(named, flags.tolist()) if n]
    if bad:
        return None, None, bad
    weights = full_model_state(accelerator, module)
    optim_state = full_optimizer_state(accelerator, module, optimizer)
    if optim_state is not None:
        optim_state = {"layout": BY_NAME, **optim_state}
    return weights, optim_state, bad


class _Unsharded(torch.nn.Module):
    """What validation reads from a stage module: ``.model`` (and train/eval mode)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model


def unsharded_copy(accelerator, module) -> torch.nn.Module | None:
    """Under FSDP: a plain copy of the model with the full weights on the main process, for validation there
    (which calls the model's methods directly and runs no collectives); None on the other processes. Every process
    must call this. Without FSDP: the model itself."""
    if not uses_fsdp(accelerator):
        return accelerator.unwrap_model(module)
    from ..model.vlmo import VLMo

    weights = full_model_state(accelerator, module)
    if weights is None:
        return None
    model = VLMo(accelerator.unwrap_model(module).model.config)
    model.load_state_dict(weights)
    return _Unsharded(model).to(accelerator.device)
