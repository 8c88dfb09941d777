"""``train.trackers`` through Accelerate, offline: a two-step training with each tracker, then the tracker's own files
are read back and must hold the metrics ``metrics.jsonl`` holds. A tracker whose package is not installed is skipped
(the reason says which package); a missing or too old one is refused before training."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest

from helpers import run

LOGGED = ("loss", "mlm_loss", "lr")


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _train(capsys, demo_root: Path, run_name: str, tracker: str) -> Path:
    """Two logged steps of stage 2 with ``tracker`` only; returns the run folder."""
    code, _, err = run(capsys, "pretrain-text", "tiny", "pretrain.text.max_steps=2", "pretrain.text.init=",
                       "train.log_every=1", f"pretrain.text.run_name={run_name}", f'train.trackers=["{tracker}"]',
                       "train.report=false", "--overwrite")
    assert code == 0, err
    return demo_root / "runs" / run_name


def _jsonl_steps(folder: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {row["step"]: row for row in rows if "mlm_loss" in row}


def _records(path: Path) -> list[bytes]:
    """The records of a W&B ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then LevelDB-log blocks of
    32 KiB holding chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
        else:
            break  # zero padding at the end of the file
    return records


@pytest.mark.skipif(not _installed("wandb"), reason="wandb is not installed (pip install -e '.[trackers]')")
def test_wandb_offline_run_holds_the_logged_metrics(demo_root, monkeypatch, capsys, tmp_path):
    from wandb.proto import wandb_internal_pb2

    monkeypatch.chdir(demo_root)
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                        "WANDB_CONFIG_DIR": tmp_path / "config", "WANDB_CACHE_DIR": tmp_path / "cache",
                        "WANDB_DATA_DIR": tmp_path / "data"}.items():
        monkeypatch.setenv(name, str(value))
    folder = _train(capsys, demo_root, "wandb-run", "wandb")
    runs = list((folder / "trackers" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    history = {}
    for data in _records(runs[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            # a flat key is written as ``key`` or as a one-part ``nested_key`` (wandb versions differ)
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[items["_step"]] = items
    expected = _jsonl_steps(folder)
    assert sorted(history) == sorted(expected) == [1, 2]
    for step, row in expected.items():
        for key in LOGGED:
            assert history[step][key] == pytest.approx(row[key]), (step, key)


@pytest.mark.skipif(not _installed("mlflow"), reason="mlflow is not installed (pip install -e '.[mlflow]')")
@pytest.mark.parametrize("configured", [False, True], ids=["store-in-run-folder", "MLFLOW_TRACKING_URI"])
def test_mlflow_store_holds_the_logged_metrics(demo_root, monkeypatch, capsys, tmp_path, configured):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(demo_root)
    run_name = f"mlflow-run-{int(configured)}"
    if configured:
        uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        uri = f"sqlite:///{demo_root / 'runs' / run_name / 'trackers' / 'mlflow.db'}"
    folder = _train(capsys, demo_root, run_name, "mlflow")
    assert (tmp_path / "elsewhere.db").exists() == configured
    assert (folder / "trackers" / "mlflow.db").exists() != configured
    assert not (demo_root / "mlruns").exists()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(run_name)
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == run_name
    expected = _jsonl_steps(folder)
    for key in LOGGED:
        logged = {m.step: m.value for m in client.get_metric_history(found.info.run_id, key)}
        assert logged == pytest.approx({step: row[key] for step, row in expected.items()}), key


def _aim_series(repo: Path) -> dict[str, dict[int, float]]:
    """Every metric series of the aim runs in ``repo`` as ``{name: {step: value}}``, read from aim's own storage
    (one RocksDB per run under ``.aim/seqs/chunks``, paths and values in aim's encoding). aim 3.29's reading API
    (``Repo.iter_runs``) yields no run here although ``aim runs ls`` lists it, so the storage is read directly."""
    import aimrocks
    from aim.storage import encoding

    columns: dict[tuple[str, str], dict[int, object]] = {}
    chunks = sorted((repo / ".aim" / "seqs" / "chunks").iterdir())
    assert len(chunks) == 1, chunks
    db = aimrocks.DB(str(chunks[0]), aimrocks.Options(create_if_missing=False), read_only=True)
    items = db.iteritems()
    items.seek_to_first()
    for key, value in items:
        path = encoding.decode_path(key)  # seqs, v2, chunks, run hash, context, name, column[, row]
        if len(path) == 8 and path[6] in ("step", "val"):
            columns.setdefault((path[5], path[6]), {})[path[7]] = encoding.decode(value)
    names = {name for name, _ in columns}
    return {name: {columns[name, "step"][row]: columns[name, "val"][row] for row in columns[name, "step"]}
            for name in names}


@pytest.mark.skipif(not _installed("aim"), reason="aim is not installed (pip install -e '.[aim]')")
def test_aim_repository_holds_the_logged_metrics(demo_root, monkeypatch, capsys):
    monkeypatch.chdir(demo_root)
    folder = _train(capsys, demo_root, "aim-run", "aim")
    series = _aim_series(folder / "trackers")
    expected = _jsonl_steps(folder)
    for key in LOGGED:
        assert series[key] == pytest.approx({step: row[key] for step, row in expected.items()}), key


def test_a_tracker_package_too_old_for_accelerate_is_refused_before_training(demo_root, monkeypatch, capsys):
    import importlib.metadata

    real_spec, real_version = importlib.util.find_spec, importlib.metadata.version
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "mlflow" else real_spec(name, *a))
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "1.27.0" if name == "mlflow" else real_version(name))
    monkeypatch.chdir(demo_root)
    code, _, err = run(capsys, "pretrain-text", "tiny", "pretrain.text.max_steps=1", "pretrain.text.init=",
                       'train.trackers=["mlflow"]', "pretrain.text.run_name=old-mlflow")
    assert code == 2 and "mlflow 1.27.0 is installed" in err and "search_experiments" in err
    assert "pip install 'mlflow>=1.28'" in err.replace("\n", "") and "Traceback" not in err
    assert not (demo_root / "runs" / "old-mlflow" / "checkpoints").exists()


def test_mlflow_without_its_sqlite_store_is_refused_before_training(demo_root, monkeypatch, capsys):
    """mlflow-skinny has no SQLite store: without MLFLOW_TRACKING_URI the run folder's store cannot be opened."""
    real_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        object() if name == "mlflow" else None if name == "sqlalchemy" else real_spec(name, *a)))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(demo_root)
    code, _, err = run(capsys, "pretrain-text", "tiny", "pretrain.text.max_steps=1", "pretrain.text.init=",
                       'train.trackers=["mlflow"]', "pretrain.text.run_name=skinny-mlflow")
    flat = " ".join(err.split())
    assert code == 2 and "pip install mlflow" in flat and "MLFLOW_TRACKING_URI" in flat and "Traceback" not in err
    assert not (demo_root / "runs" / "skinny-mlflow" / "checkpoints").exists()
