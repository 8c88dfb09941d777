"""The run folder: its name, its lock, what ``--overwrite`` may replace, the recipe history and the clean-up of
what interrupted or failed runs leave behind.

A run folder holds only what a run writes (:data:`RUN_ENTRIES`). While a run writes it, the main process holds the
folder's :class:`~vlmo_cli.run_lock.FolderLock`, so any checkpoint temporary found there at start belongs to a
writer that died.
"""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

from ..errors import RecipeError, RunFolderError
from ..layout import CHECKPOINTS_DIR, EVAL_DIR, LATEST_NAME, METRICS_NAME, RECIPE_NAME
from ..run_lock import LOCK_NAME, FolderLock
from .checkpoint import is_complete, list_checkpoints

#: what a run writes into its folder (``eval`` comes from ``vlmo eval`` on the run's model)
RUN_ENTRIES = (RECIPE_NAME, METRICS_NAME, "tensorboard", "trackers", CHECKPOINTS_DIR, EVAL_DIR, "init.json",
               "environment.json", "report.html", LOCK_NAME)
_RESUME_RECIPE = re.compile(r"^recipe\.resume-(\d+)\.toml$")
_RUN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_CHECKPOINT_TEMP = re.compile(r"^\.(step_\d+)\.(tmp|old)-.+$")
_METRICS = METRICS_NAME


# ---------------------------------------------------------------------- names
def check_run_name(name: str, where: str = "run_name") -> str:
    """``name`` if it is one safe path component (letters, digits, ``-``, ``_``, ``.``; not ``.`` or ``..``)."""
    if not _RUN_NAME.match(name) or name in (".", ".."):
        raise RecipeError(
            f"{where} {name!r} is not a run folder name: use one name made of letters, digits, '-', '_' and '.' "
            "(no path separators, not '.' or '..')"
        )
    return name


def default_run_name(source: str, stage_name: str) -> str:
    """``<recipe file stem>-<stage>``, e.g. ``tiny-pretrain-vl``, with unsafe characters replaced by ``-``."""
    name = f"{Path(source).stem}-{stage_name.replace('.', '-').replace('_', '-')}"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name).strip(".") or "run"


def run_path_for(stage, run_dir: str | Path | None = None) -> Path:
    """The run folder of a resolved training stage: ``run_dir`` if given, else ``output_dir/run_name``."""
    if run_dir:
        return Path(run_dir)
    tcfg = stage.train
    if tcfg.run_name:
        name = check_run_name(tcfg.run_name, f"{stage.source}: [{stage.name}] run_name")
    else:
        name = default_run_name(stage.source, stage.name)
    return Path(tcfg.output_dir) / name


# ---------------------------------------------------------------------- contents
def is_run_entry(name: str) -> bool:
    return name in RUN_ENTRIES or bool(_RESUME_RECIPE.match(name))


def foreign_entries(run_dir: Path) -> list[str]:
    """Entries of ``run_dir`` that no run writes (sorted)."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if not is_run_entry(p.name))


def has_results(run_dir: Path) -> bool:
    """Whether a run left anything worth keeping: a complete checkpoint or logged metrics."""
    metrics = run_dir / _METRICS
    return bool(list_checkpoints(run_dir)) or (metrics.is_file() and metrics.stat().st_size > 0)


def _clear(run_dir: Path) -> None:
    """Delete what a previous run wrote, keeping the lock file this run holds."""
    for entry in run_dir.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def clean_checkpoint_temporaries(run_dir: Path) -> str | None:
    """Remove the ``checkpoints/.step_N.tmp-*`` / ``.old-*`` folders of dead writers (call with the lock held).

    A ``.step_N.old-*`` folder whose ``step_N`` is missing is the complete checkpoint a writer was replacing when it
    died: it is moved back instead. Returns one line saying what was done, or None when there was nothing.
    """
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    removed, restored, freed = [], [], 0
    for entry in sorted(root.iterdir()):
        match = _CHECKPOINT_TEMP.match(entry.name)
        if not match or not entry.is_dir():
            continue
        final = root / match.group(1)
        if match.group(2) == "old" and not final.exists() and is_complete(entry):
            os.replace(entry, final)
            restored.append(final.name)
            continue
        freed += _size(entry)
        shutil.rmtree(entry)
        removed.append(entry.name)
    for pointer in root.glob(f".{LATEST_NAME}.tmp*"):  # a half-written ``latest`` pointer of a dead writer
        pointer.unlink(missing_ok=True)
    parts = []
    if removed:
        parts.append(f"removed {len(removed)} unfinished checkpoint folder(s) of an interrupted run "
                     f"({', '.join(removed)}; {freed / 1e6:.1f} MB)")
    if restored:
        parts.append(f"restored {', '.join(restored)} that an interrupted write was replacing")
    return "; ".join(parts) or None


# ---------------------------------------------------------------------- recipe history
def resume_recipes(run_dir: Path) -> list[Path]:
    """``recipe.resume-N.toml`` files of a run, in order."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("recipe.resume-*.toml") if (m := _RESUME_RECIPE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_recipe(run_dir: Path) -> Path | None:
    """The recipe the run last started with: its newest resume recipe, else ``recipe.toml``."""
    history = resume_recipes(run_dir)
    if history:
        return history[-1]
    first = run_dir / RECIPE_NAME
    return first if first.is_file() else None


def write_recipe(run_dir: Path, text: str, resumed: bool) -> Path:
    """Keep the history: a fresh start writes ``recipe.toml`` (dropping older resume files), a resume adds
    ``recipe.resume-N.toml``; nothing is overwritten while resuming."""
    if not resumed or not (run_dir / RECIPE_NAME).is_file():
        for old in resume_recipes(run_dir):
            old.unlink()
        path = run_dir / RECIPE_NAME
    else:
        history = resume_recipes(run_dir)
        n = int(_RESUME_RECIPE.match(history[-1].name).group(1)) + 1 if history else 1
        path = run_dir / f"recipe.resume-{n}.toml"
    path.write_text(text)
    return path


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


#: keys whose change makes a resumed run differ from an uninterrupted one in its data, batches or model
_EXACT_TRAIN = ("seed", "grad_accum", "no_decay")
_EXACT_TASK = ("dataset", "split", "itc_vl", "with_itm", "freeze_vision", "num_answers")


def breaks_exactness(key: str, stage_name: str) -> bool:
    section, _, name = key.partition(".")
    if section == "model":
        return name != "init"  # weights come from the checkpoint on resume
    if section == "data":
        return name != "num_workers"
    if section == "train":
        return name in _EXACT_TRAIN
    if key.startswith(stage_name + "."):
        return key[len(stage_name) + 1:] in _EXACT_TASK
    return True  # another stage's table: the run folder belongs to a different stage


def recipe_changes(old_toml: str, new_toml: str, stage_name: str) -> tuple[list[str], list[str]]:
    """``(breaking, other)`` differences between two resolved recipes, each as ``key old → new``."""
    old, new = _flatten(tomllib.loads(old_toml)), _flatten(tomllib.loads(new_toml))
    breaking, other = [], []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) == new.get(key):
            continue
        line = f"{key} {_show(old.get(key))} → {_show(new.get(key))}"
        (breaking if breaks_exactness(key, stage_name) else other).append(line)
    return breaking, other


def _show(value: Any) -> str:
    return "(unset)" if value is None else repr(value)


def check_resume_recipe(run_dir: Path, checkpoint: Path, new_toml: str, stage_name: str,
                        allow_changed: bool) -> list[str]:
    """Compare the recipe a resume starts with against the one the checkpoint's run last started with.

    Raises :class:`RunFolderError` listing the changes that break exactness unless ``allow_changed``; returns the
    lines to log (the other changes, and the accepted breaking ones).
    """
    source = checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS_DIR else run_dir
    previous = latest_recipe(source)
    if previous is None:
        return [f"no saved recipe in {source} to compare the resumed recipe with"]
    breaking, other = recipe_changes(previous.read_text(), new_toml, stage_name)
    if breaking and not allow_changed:
        raise RunFolderError(
            f"cannot resume {run_dir} exactly: since {previous.name} the recipe changed "
            f"{'; '.join(breaking)} (data order, batches or model); pass --resume-changed to continue anyway, "
            "or train under another --run-name"
        )
    lines = []
    if breaking:
        lines.append("resuming with changes that break exactness (--resume-changed): " + "; ".join(breaking))
    if other:
        lines.append(f"recipe changes since {previous.name}: " + "; ".join(other))
    return lines


# ---------------------------------------------------------------------- the folder while a run writes it
class RunFolder:
    """Opens a run folder for one run: checks, locks, replaces (``overwrite``) and cleans it; on a failure, removes
    the folder again if this run created it and left no checkpoint or metrics.

    Args:
        path: the run folder.
        resume: the ``--resume`` value (``""`` = a fresh start).
        overwrite: replace a previous run in the folder (only a run folder).
        take_over_lock: take over a stale lock left by a killed run.
        enabled: False on the processes that do not write the folder (all but the main one).

    Attributes:
        notes: lines for the run's log (temporaries cleaned, a lock taken over, a folder replaced).
    """

    def __init__(self, path: Path, resume: str = "", overwrite: bool = False, take_over_lock: bool = False,
                 enabled: bool = True) -> None:
        self.path = Path(path)
        self.resume, self.overwrite, self.enabled = resume, overwrite, enabled
        self.lock = FolderLock(self.path, take_over=take_over_lock, what="run folder")
        self.notes: list[str] = []
        self.created = False

    def __enter__(self) -> "RunFolder":
        if not self.enabled:
            return self
        self._check()
        self.created = not self.path.exists()
        self.lock.acquire()
        try:
            if self.lock.took_over is not None:
                self.notes.append(f"took over the stale lock of {self.lock.took_over.describe()}")
            if self.overwrite and not self.resume and not self.created:
                _clear(self.path)
                self.notes.append(f"--overwrite: replaced the previous run in {self.path}")
            cleaned = clean_checkpoint_temporaries(self.path)
            if cleaned:
                self.notes.append(cleaned)
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.enabled:
            return
        try:
            if exc_type is not None and self.created and not has_results(self.path):
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self.lock.release()

    def _check(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path} is a file, not a run folder; choose another --run-name")
        if self.overwrite and not self.resume:
            foreign = foreign_entries(self.path)
            if foreign:
                more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
                raise RunFolderError(
                    f"--overwrite refused: {self.path} holds {foreign[0]!r}{more}, which no run writes; only a run "
                    f"folder ({', '.join(RUN_ENTRIES[:4])}) is replaced. Move it away or choose another --run-name"
                )
        elif list_checkpoints(self.path) and not self.resume:
            raise RunFolderError(
                f"{self.path} already holds checkpoints of a run; continue it with --resume auto, "
                "or choose another --run-name, or pass --overwrite to start afresh"
            )
