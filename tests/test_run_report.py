"""``vlmo report``: the HTML page of a run folder, built from a hand-made run folder (no training needed)."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
from helpers import run
from PIL import Image

from vlmo_cli.train.report import group_metrics, metric_series, read_metric_rows, render_run_report


def _png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def run_dir(tmp_path):
    run = tmp_path / "runs" / "demo"
    rows = [{"step": s, "time": 2.0 * s, "loss": 5.0 - s / 10, "itm_loss": 0.7, "itm_acc": 0.6, "lr": 1e-4,
             "samples_per_s": 100.0, "logit_scale": 14.0, "epoch": s / 20} for s in (5, 10, 15, 20)]
    rows.append({"step": 20, "time": 41.0, "val_loss": 4.5, "val_tr_r1": 12.5, "val_<b>bold": 1.0})
    (run / "checkpoints" / "step_20").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 25, "lo')
    (run / "recipe.toml").write_text('[train]\nlr = 1e-4  # <not markup>\n')
    (run / "recipe.resume-1.toml").write_text('[train]\nlr = 5e-5\n')
    (run / "checkpoints" / "latest").write_text("step_20")
    (run / "checkpoints" / "step_20" / "trainer_state.json").write_text(
        json.dumps({"step": 20, "total_steps": 20, "stage": "pretrain.vl", "samples_seen": 640}))
    (run / "checkpoints" / "step_20" / "model.safetensors").write_bytes(b"\0" * 2048)
    (run / "eval").mkdir()
    (run / "eval" / "retrieval-examples.png").write_bytes(_png("red"))
    (run / "eval" / "retrieval.json").write_text(json.dumps(
        {"task": "retrieval", "metrics": {"tr_r1": 33.3}, "examples": str(run / "eval" / "retrieval-examples.png")}))
    (run / "eval" / "vqa-submission.json").write_text("[]")  # not a report: ignored
    return run


def test_metrics_are_grouped_into_panels_each_key_once():
    keys = ["itc_loss", "loss", "itm_acc", "lr", "samples_per_s", "val_loss", "val_tr_r1", "logit_scale", "epoch"]
    panels = {p.title: p.keys for p in group_metrics(keys)}
    assert panels == {
        "training losses": ["itc_loss", "loss"], "training accuracies": ["itm_acc"], "learning rate": ["lr"],
        "throughput (samples/s)": ["samples_per_s"], "validation losses": ["val_loss"],
        "validation metrics": ["val_tr_r1"], "other": ["logit_scale"]}


def test_series_skip_a_torn_last_line_and_non_finite_values(run_dir):
    with (run_dir / "metrics.jsonl").open("a") as fh:
        fh.write('\n{"step": 30, "loss": NaN}\n')
    rows = read_metric_rows(run_dir)
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 20, 30]
    steps, values = metric_series(rows)["loss"]
    assert steps == [5, 10, 15, 20] and values == pytest.approx([4.5, 4.0, 3.5, 3.0])


def test_page_is_self_contained_and_shows_every_part(run_dir):
    page = render_run_report(run_dir)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # 7 panels (training losses, accuracies, lr, throughput, validation losses, validation metrics, other) + 1 example
    assert len(images) == 8
    for data in images:
        assert Image.open(io.BytesIO(base64.b64decode(data))).format == "PNG"
    assert "src=\"http" not in page and "<script" not in page
    assert "pretrain.vl" in page and "20 of 20" in page and "step_20 (latest)" in page
    assert "recipe.resume-1.toml" in page and "lr = 5e-5" in page
    assert "tr_r1" in page and "33.3" in page and "vqa-submission.json" not in page
    assert "&lt;not markup&gt;" in page and "val_&lt;b&gt;bold" in page and "<b>bold" not in page
    assert "Not recorded" in page  # no environment.json


def test_environment_is_shown_when_recorded(run_dir):
    from vlmo_cli.train.environment import write_environment

    write_environment(run_dir)
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["torch"] and env["python"] and env["vlmo_cli"]
    assert env["torch"] in render_run_report(run_dir)


def test_cli_writes_the_page(run_dir, tmp_path, capsys):
    code, out, _ = run(capsys, "report", str(run_dir))
    assert code == 0 and (run_dir / "report.html").is_file()
    target = tmp_path / "elsewhere" / "r.html"
    code, out, _ = run(capsys, "report", str(run_dir), "--out", str(target))
    assert code == 0 and target.read_text().startswith("<!doctype html>")
    code, _, err = run(capsys, "report", str(run_dir), "--out", str(target))
    assert code == 2 and "--overwrite" in err
    assert run(capsys, "report", str(run_dir), "--out", str(target), "--overwrite")[0] == 0
    assert run(capsys, "report", str(run_dir))[0] == 0  # the run's own report.html is always brought up to date
    mine = tmp_path / "notes.html"
    mine.write_text("<html>my notes</html>")
    code, _, err = run(capsys, "report", str(run_dir), "--out", str(mine), "--overwrite")
    assert code == 2 and "was not written by vlmo report" in err and mine.read_text() == "<html>my notes</html>"


def test_a_folder_that_is_not_a_run_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    code, _, err = run(capsys, "report", str(tmp_path))
    assert code == 2 and "not a run folder" in err and "Traceback" not in err
    code, _, err = run(capsys, "report", str(tmp_path / "missing"))
    assert code == 2 and "not a folder" in err


def test_a_training_run_records_its_environment_trackers_and_report(demo_root, monkeypatch, capsys):
    monkeypatch.chdir(demo_root)
    args = ["pretrain-text", "tiny", "pretrain.text.max_steps=2", "pretrain.text.init=", "train.log_every=1",
            "pretrain.text.run_name=report-run"]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    folder = demo_root / "runs" / "report-run"
    assert json.loads((folder / "environment.json").read_text())["processes"] == 1
    assert list((folder / "trackers" / "report-run").glob("events.out.tfevents.*"))
    page = (folder / "report.html").read_text()
    assert "training losses" in page and "mlm_loss" in page

    code, _, err = run(capsys, *args, "--overwrite", "train.trackers=[]", "train.report=false")
    assert code == 0, err
    assert not (folder / "trackers").exists() and not (folder / "report.html").exists()


def test_a_tracker_that_is_not_installed_is_refused_before_training(demo_root, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    monkeypatch.chdir(demo_root)
    code, _, err = run(capsys, "pretrain-text", "tiny", "pretrain.text.max_steps=1", "pretrain.text.init=",
                       'train.trackers=["tensorboard","wandb"]', "pretrain.text.run_name=no-wandb")
    assert code == 2 and "pip install wandb" in err and "Traceback" not in err
    code, _, err = run(capsys, "pretrain-text", "tiny", 'train.trackers=["tensorbord"]')
    assert code == 2 and "unknown tracker" in err
