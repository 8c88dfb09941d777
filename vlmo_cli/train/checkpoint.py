"""Run checkpoints: ``checkpoints/step_N/`` written atomically, ``latest`` pointer, keep-last-n, resume.

A checkpoint directory holds the model directory files (``config.json``, ``model.safetensors``, tokenizer files) and
``training_state.pt`` (optimizer, fp16 loss-scaler, RNG streams; tensors and plain containers only, read back with
``weights_only=True``) plus ``trainer_state.json`` (step, epoch, data position, the open metric window, metrics).
It is written under a temporary name and renamed into place, so a directory cut off mid-write is never taken for a
checkpoint; its files and folders get the permissions the umask allows, like any other file the run writes.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..layout import (CHECKPOINTS_DIR, CONFIG_NAME, LATEST_NAME, TRAINER_STATE_NAME, TRAINING_STATE_NAME, WEIGHTS_NAME,
                      atomic_directory, atomic_file, checkpoint_name)
from ..model.weights import state_dict_for_saving
from ..safe_load import load_torch_file

STATE_FILE = TRAINING_STATE_NAME
TRAINER_STATE = TRAINER_STATE_NAME
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class TrainerState:
    """Where a run stands. ``micro_batches_in_epoch`` is the data position inside ``epoch``; ``window`` holds the
    metric sums of the steps logged since the last metrics line (``{"sums": {...}, "count": n}``), so that a resumed
    run averages its first line over as many steps as an uninterrupted one."""

    step: int = 0
    epoch: int = 0
    micro_batches_in_epoch: int = 0
    samples_seen: int = 0
    total_steps: int = 0
    stage: str = ""
    last_metrics: dict = field(default_factory=dict)
    window: dict = field(default_factory=dict)
    stream: dict = field(default_factory=dict)  # shard-stream positions per process (streamed data only)

    def epochs_done(self, batches_per_epoch: int | None) -> float:
        """Passes over the data so far, with the fraction of the current one (whole epochs when its length is
        unknown, as for streamed shards)."""
        if not batches_per_epoch:
            return float(self.epoch)
        return round(self.epoch + self.micro_batches_in_epoch / batches_per_epoch, 4)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": list(_py_state_to_plain(random.getstate())),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _py_state_to_plain(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def scaler_of(optimizer) -> torch.amp.GradScaler | None:
    """The fp16 loss scaler accelerate attaches to the optimizer it prepares (None without fp16)."""
    return getattr(optimizer, "scaler", None)


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainerState,
    extra: dict | None = None,
    tokenizer=None,
    keep_last_n: int = 0,
    weights: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step_N`` atomically, point ``latest`` at it and prune old ones. ``weights`` and
    ``optimizer_state`` replace ``model.state_dict()`` and ``optimizer.state_dict()`` (FSDP: gathered first)."""
    root = run_dir / CHECKPOINTS_DIR
    final = root / checkpoint_name(state.step)
    with atomic_directory(final) as tmp:
        model.config.save(tmp / CONFIG_NAME)
        from safetensors.torch import save_file

        tensors = weights if weights is not None else state_dict_for_saving(model)
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "step": str(state.step)})
        if tokenizer is not None:  # a model directory carries its tokenizer
            tokenizer.save(tmp)
        optim = optimizer_state if optimizer_state is not None else optimizer.state_dict()
        blob = {"optimizer": optim, "rng": rng_state(), **(extra or {})}
        scaler = scaler_of(optimizer)
        if scaler is not None:
            blob["scaler"] = scaler.state_dict()
        torch.save(blob, tmp / STATE_FILE)
        (tmp / TRAINER_STATE).write_text(json.dumps(asdict(state), indent=2) + "\n")
    with atomic_file(root / LATEST_NAME) as pointer:
        pointer.write_text(final.name + "\n")
    if keep_last_n > 0:
        for old in list_checkpoints(run_dir)[:-keep_last_n]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def is_complete(path: Path) -> bool:
    return all((path / f).is_file() for f in (CONFIG_NAME, WEIGHTS_NAME, STATE_FILE, TRAINER_STATE))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary and partial directories are ignored)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and is_complete(p)]
    return [p for _, p in sorted(found)]


def find_resume(run_dir: Path, resume: str) -> Path | None:
    """``resume="auto"``: the newest complete checkpoint of ``run_dir`` (or None); otherwise the given path."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if path.is_dir() and (path / CHECKPOINTS_DIR).is_dir():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"{path}: no complete checkpoint to resume from")
        return found[-1]
    if not is_complete(path):
        raise CheckpointError(f"{path}: not a complete training checkpoint (needs {STATE_FILE} and {TRAINER_STATE})")
    return path


def restore_training_state(blob: dict, optimizer, load_by_name=None) -> str | None:
    """Put the optimizer, the fp16 loss scaler and the RNG streams back as ``save_checkpoint`` stored them; returns
    a line for the log when the run now uses fp16 but the checkpoint has no scaler state. An optimizer state stored
    by parameter name (``"layout": "by_name"``, written under FSDP) goes through ``load_by_name``."""
    optim = blob["optimizer"]
    if optim.get("layout") == "by_name":
        if load_by_name is None:
            raise CheckpointError("the checkpoint stores its optimizer state by parameter name (FSDP); "
                                  "resume it through the training loop")
        load_by_name({k: v for k, v in optim.items() if k != "layout"})
    else:
        optimizer.load_state_dict(optim)
    set_rng_state(blob["rng"])
    scaler = scaler_of(optimizer)
    if scaler is None:
        return None
    if "scaler" not in blob:
        return "the checkpoint holds no fp16 loss-scaler state (trained without fp16): the scaler starts afresh"
    scaler.load_state_dict(blob["scaler"])
    return None


def load_training_state(path: Path) -> tuple[dict, TrainerState]:
    blob = load_torch_file(path / STATE_FILE, "training state")  # refuses code-executing pickles, names corrupt files
    try:
        saved = json.loads((path / TRAINER_STATE).read_text())
        saved.pop("best_metric", None)  # written (always null) by earlier versions
        state = TrainerState(**saved)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user-facing checkpoint problem
        raise CheckpointError(f"{path}: cannot read training state ({exc})") from exc
    return blob, state
