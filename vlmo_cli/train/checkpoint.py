"""Run checkpoints: ``checkpoints/step_N/`` written atomically, ``latest`` pointer, keep-last-n, resume.

A checkpoint directory holds the model directory files (``config.json``, ``model.safetensors``, tokenizer files) and
``training_state.pt`` (optimizer, RNG streams; tensors and plain containers only, read back with
``weights_only=True``) plus ``trainer_state.json`` (step, epoch, data position, metrics). It is written under a
temporary name and renamed into place, so a directory cut off mid-write is never taken for a checkpoint.
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
from ..model.io import CONFIG_NAME, WEIGHTS_NAME, atomic_directory, commit_directory, state_dict_for_saving
from ..safe_load import load_torch_file

STATE_FILE = "training_state.pt"
TRAINER_STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class TrainerState:
    """Where a run stands. ``micro_batches_in_epoch`` is the data position inside ``epoch``."""

    step: int = 0
    epoch: int = 0
    micro_batches_in_epoch: int = 0
    samples_seen: int = 0
    total_steps: int = 0
    stage: str = ""
    best_metric: float | None = None
    last_metrics: dict = field(default_factory=dict)


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


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainerState,
    extra: dict | None = None,
    tokenizer=None,
    keep_last_n: int = 0,
) -> Path:
    """Write ``run_dir/checkpoints/step_N`` atomically, point ``latest`` at it and prune old ones."""
    root = run_dir / "checkpoints"
    final = root / f"step_{state.step}"
    tmp = atomic_directory(final)
    try:
        model.config.save(tmp / CONFIG_NAME)
        from safetensors.torch import save_file

        save_file(state_dict_for_saving(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "step": str(state.step)})
        if tokenizer is not None:  # a model directory carries its tokenizer
            tokenizer.save(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state(), **(extra or {})}, tmp / STATE_FILE)
        (tmp / TRAINER_STATE).write_text(json.dumps(asdict(state), indent=2) + "\n")
        commit_directory(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = root / ".latest.tmp"
    pointer.write_text(final.name + "\n")
    pointer.replace(root / "latest")
    if keep_last_n > 0:
        for old in list_checkpoints(run_dir)[:-keep_last_n]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def is_complete(path: Path) -> bool:
    return all((path / f).is_file() for f in (CONFIG_NAME, WEIGHTS_NAME, STATE_FILE, TRAINER_STATE))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary and partial directories are ignored)."""
    root = Path(run_dir) / "checkpoints"
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
    if path.is_dir() and (path / "checkpoints").is_dir():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"{path}: no complete checkpoint to resume from")
        return found[-1]
    if not is_complete(path):
        raise CheckpointError(f"{path}: not a complete training checkpoint (needs {STATE_FILE} and {TRAINER_STATE})")
    return path


def load_training_state(path: Path) -> tuple[dict, TrainerState]:
    blob = load_torch_file(path / STATE_FILE, "training state")  # refuses code-executing pickles, names corrupt files
    try:
        state = TrainerState(**json.loads((path / TRAINER_STATE).read_text()))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user-facing checkpoint problem
        raise CheckpointError(f"{path}: cannot read training state ({exc})") from exc
    return blob, state
