"""Faults during training: a diverging step, non-finite weights before a checkpoint, a checkpoint write that fails.

The step check costs one device->host transfer per optimizer step: the step's losses, its gradient norm and the
stop request of :mod:`vlmo_cli.train.signals` travel in one small tensor (summed over processes, so that every
process takes the same decision at the same step). A checkpoint is written only when every weight is finite, so
every checkpoint this loop leaves behind can be resumed.
"""

from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..errors import CheckpointError, VlmoError
from ..layout import CHECKPOINTS_DIR, LATEST_NAME, WEIGHTS_NAME, checkpoint_name
from .checkpoint import list_checkpoints

ADVICE = "Try a lower train.lr, train.grad_clip, or precision=no"


class TrainingDiverged(VlmoError):
    """A loss, a gradient or a weight became NaN or infinite."""


# ---------------------------------------------------------------------- which checkpoint is good
def count_non_finite(tensors: Iterable[torch.Tensor]) -> int:
    """How many of ``tensors`` hold a NaN or an infinity (one host sync for all of them)."""
    flags = [~torch.isfinite(t).all() for t in tensors if t.is_floating_point() and t.numel()]
    return int(torch.stack(flags).sum()) if flags else 0


def checkpoint_is_finite(path: Path) -> bool:
    """Whether every weight of the checkpoint ``path`` is finite (read one tensor at a time)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path / WEIGHTS_NAME), framework="pt") as fh:
            return all(count_non_finite([fh.get_tensor(k)]) == 0 for k in fh.keys())
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is no good checkpoint either
        return False


def last_good_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of ``run_dir`` whose weights are all finite (None if there is none)."""
    return next((p for p in reversed(list_checkpoints(run_dir)) if checkpoint_is_finite(p)), None)


def diverged(stage_name: str, what: str, step: int, run_dir: Path, consequence: str) -> TrainingDiverged:
    """The error that stops a diverging run: what went wrong, where, and the checkpoint to go back to."""
    good = last_good_checkpoint(run_dir)
    where = f"Last good checkpoint: {good}" if good else "No good checkpoint of this run exists"
    return TrainingDiverged(f"{stage_name}: {what} at step {step}; {consequence}. {where}. {ADVICE}")


# ---------------------------------------------------------------------- the per-step check
def grad_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
    """Total 2-norm of the gradients, on the device (no sync); None when no parameter has a gradient."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)]))


@dataclass
class StepVerdict:
    problem: str | None  # "loss is nan", "gradient norm is inf" … (None: the step may update the weights)
    stop: bool  # some process asked to stop after this step (a signal)


def check_step(losses: list[torch.Tensor], norm: torch.Tensor | None, stop_requested: bool,
               reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> StepVerdict:
    """Decide, with one host sync, whether a step is finite and whether to stop after it.

    Args:
        losses: the step's micro-batch losses (device tensors).
        norm: the step's gradient norm (None: not checked, e.g. under fp16 loss scaling, which skips such steps).
        stop_requested: this process received a stop signal.
        reduce: sums a tensor over processes (None in a single process).
    """
    loss = torch.stack([v.detach().float().reshape(()) for v in losses])
    device = loss.device
    grad_bad = ~torch.isfinite(norm.to(device)) if norm is not None else torch.zeros((), dtype=torch.bool, device=device)
    flags = torch.stack([~torch.isfinite(loss).all(), grad_bad, torch.tensor(stop_requested, device=device)]).float()
    if reduce is not None:
        flags = reduce(flags)
    loss_bad, grad_bad, stop = (bool(v) for v in flags.tolist())  # the one sync of the step
    problem = None
    if loss_bad:
        bad = loss[~torch.isfinite(loss)]
        problem = f"loss is {bad[0].item()}" if bad.numel() else "loss is non-finite on another process"
    elif grad_bad:
        problem = f"gradient norm is {norm.item()}"
    return StepVerdict(problem, stop)


# ---------------------------------------------------------------------- writing a checkpoint
def non_finite_weights(model: torch.nn.Module) -> list[str]:
    """Names of the model's tensors that hold a NaN or an infinity (one host sync)."""
    named = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point() and v.numel()]
    if not named:
        return []
    flags = torch.stack([~torch.isfinite(v).all() for _, v in named]).tolist()
    return [k for (k, _), bad in zip(named, flags) if bad]


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC from Python, from safetensors (Rust ``os error 28``) or torch's zip writer (which loses the errno)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if any(s in text for s in ("No space left", "os error 28", "unexpected pos", "file write failed")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def write_checkpoint(save: Callable[[], Path], run_dir: Path, step: int) -> Path:
    """Run ``save`` (which writes ``checkpoints/step_<step>`` atomically); a full disk becomes a one-line error.

    The atomic writer removes its temporary directory and leaves the previous checkpoint and ``latest`` as they
    were; this also removes a half-written ``latest`` pointer.
    """
    target = Path(run_dir) / CHECKPOINTS_DIR / checkpoint_name(step)
    try:
        return save()
    except Exception as exc:  # noqa: BLE001 - only write failures are turned into messages
        if not _is_disk_full(exc) and not isinstance(exc, OSError):
            raise
        for pointer in target.parent.glob(f".{LATEST_NAME}.tmp*"):
            pointer.unlink(missing_ok=True)
        for tmp in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        if _is_disk_full(exc):
            raise CheckpointError(f"no space left on device while writing {target}; the previous checkpoint is "
                                  "kept; free some space and continue with --resume auto") from exc
        raise CheckpointError(f"cannot write {target}: {exc.strerror or exc}") from exc
