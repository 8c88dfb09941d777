"""Experiment trackers through Accelerate: which ones a recipe asks for (``train.trackers``), each checked to be
installed before the run starts, and the per-tracker settings that keep their files inside the run folder."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..config.schema import TRACKER_PACKAGES


#: the oldest release of a tracker's package that Accelerate's tracker works with, and why
MIN_VERSIONS = {"mlflow": ("1.28", "Accelerate's MLflow tracker calls mlflow.search_experiments, new in 1.28")}


def _too_old(name: str) -> str | None:
    """Why the installed package of tracker ``name`` is too old, or ``None``."""
    import importlib.metadata

    from packaging.version import Version

    if name not in MIN_VERSIONS:
        return None
    oldest, why = MIN_VERSIONS[name]
    installed = importlib.metadata.version(TRACKER_PACKAGES[name])
    if Version(installed) < Version(oldest):
        package = TRACKER_PACKAGES[name]
        return f"{package} {installed} is installed; {why}: pip install '{package}>={oldest}'"
    return None


def resolve_trackers(names: tuple[str, ...] | list[str]) -> list[str]:
    """The trackers to start; a tracker whose package is missing or too old is an error naming the install command."""
    missing = [n for n in names if importlib.util.find_spec(TRACKER_PACKAGES[n]) is None]
    if missing:
        packages = " ".join(TRACKER_PACKAGES[n] for n in missing)
        raise ConfigError(f"train.trackers names {missing}, which is not installed: pip install {packages} "
                          "(or remove it from train.trackers)")
    if "mlflow" in names and not os.environ.get("MLFLOW_TRACKING_URI") and importlib.util.find_spec("sqlalchemy") is None:
        raise ConfigError("train.trackers names 'mlflow', whose store in the run folder (SQLite) needs the full "
                          "package: pip install mlflow (mlflow-skinny has no SQLite store), or set "
                          "MLFLOW_TRACKING_URI to a tracking server")
    for name in names:
        reason = _too_old(name)
        if reason:
            raise ConfigError(f"train.trackers names {name!r}, but {reason} (or remove it from train.trackers)")
    return list(names)


TRACKER_FOLDER = "trackers"


#: the MLflow tracking store of a run when ``MLFLOW_TRACKING_URI`` names none (inside ``RUN/trackers``)
MLFLOW_STORE = "mlflow.db"


def tracker_project(run_dir: Path):
    """Accelerate's project settings: TensorBoard events go to ``RUN/trackers/<run name>/``, W&B's offline runs to
    ``RUN/trackers/wandb/`` and an aim repository to ``RUN/trackers/.aim``; MLflow writes to
    ``RUN/trackers/mlflow.db`` (see :func:`mlflow_tracking_uri`), with artifacts under ``RUN/trackers``."""
    from accelerate.utils import ProjectConfiguration

    return ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / TRACKER_FOLDER))


def tracker_init_kwargs(names: list[str], run_dir: Path) -> dict[str, Any]:
    """Keep W&B's files under the run folder too and name each tracker's run after the folder (the project, i.e. the
    W&B project or MLflow experiment, is the run name as well). W&B honours ``WANDB_MODE=offline``."""
    kwargs: dict[str, Any] = {}
    if "wandb" in names:
        kwargs["wandb"] = {"dir": str(run_dir / TRACKER_FOLDER), "name": run_dir.name}
    if "mlflow" in names:
        kwargs["mlflow"] = {"run_name": run_dir.name}
    return kwargs


def mlflow_tracking_uri(run_dir: Path) -> str:
    """Where MLflow logs: ``MLFLOW_TRACKING_URI`` when set, else an SQLite store in the run folder
    (``sqlite:///RUN/trackers/mlflow.db``: MLflow 3 refuses its old ``./mlruns`` file store by default, and a run's
    files belong in its folder)."""
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    store = (run_dir / TRACKER_FOLDER).resolve()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / MLFLOW_STORE}"


def start_trackers(accelerator, names: list[str], run_dir: Path) -> None:
    """Start the trackers of ``names`` for the run in ``run_dir`` (main process; the experiment and run are named
    after the run folder)."""
    if "mlflow" in names:
        import mlflow

        mlflow.set_tracking_uri(mlflow_tracking_uri(run_dir))
    accelerator.init_trackers(run_dir.name, init_kwargs=tracker_init_kwargs(names, run_dir))
