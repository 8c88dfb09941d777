"""Run folders from the CLI: safe run names, one writer per folder (the lock), what --overwrite may replace,
the recipe history and its check on resume, metrics that continue exactly after a resume, clean-up of what killed
and failed runs leave, fractional epochs, permissions, and the fp16 loss scaler in the checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import run
from vlmo_cli.run_lock import LOCK_NAME, read_holder
from vlmo_cli.train.checkpoint import list_checkpoints
from vlmo_cli.train.monitor import read_metrics
from vlmo_cli.train.run_dir import recipe_changes

_HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vlmo_cli.run_lock import FolderLock
    lock = FolderLock(sys.argv[1]).acquire()
    if len(sys.argv) > 2:  # a checkpoint being written when the process dies
        tmp = Path(sys.argv[1], "checkpoints", ".step_5.tmp-k9x")
        tmp.mkdir(parents=True)
        (tmp / "model.safetensors").write_bytes(bytes(2_000_000))
    print("locked", flush=True)
    time.sleep(60)
""")


def hold_lock(folder: Path, with_temp: bool = False) -> subprocess.Popen:
    """A second process holding ``folder``'s run lock (optionally mid-way through a checkpoint write)."""
    args = [sys.executable, "-c", _HOLD_LOCK, str(folder)] + (["temp"] if with_temp else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture()
def text_run(demo_root, tmp_path, monkeypatch):
    """Arguments of a quick stage-2 run on a 24-line corpus (3 batches of 8 per epoch) into tmp_path/runs."""
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "corpus.txt"
    from vlmo_cli.data.demo import demo_texts

    corpus.write_text("\n".join(demo_texts(0)[:24]) + "\n")
    code = run_quiet(["prepare", "text", str(corpus), "--out", str(tmp_path / "corpus"), "--no-progress",
                      "--tokenizer", str(demo_root / "demo_data" / "tokenizer")])
    assert code == 0
    return ["pretrain-text", "tiny", "model.vocab_size=160", "data.batch_size=8", "pretrain.text.init=",
            f"pretrain.text.dataset={tmp_path / 'corpus'}", "train.output_dir=runs", "train.log_every=2",
            "pretrain.text.warmup=1", "train.keep_last_n=0"]


def run_quiet(args: list[str]) -> int:
    from vlmo_cli.cli.app import main

    try:
        main(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in ("time", "samples_per_s")} for m in read_metrics(run_dir)]


@pytest.mark.parametrize("name", [".", "..", "a/b", "../elsewhere", "x y", "/abs"])
def test_a_run_name_is_one_safe_folder_name(text_run, tmp_path, capsys, name):
    keep = tmp_path / "runs" / "other-run"
    keep.mkdir(parents=True)
    (keep / "recipe.toml").write_text("# another run\n")
    code, out, err = run(capsys, *text_run, "--run-name", name, "--overwrite")
    assert code == 2, out + err
    assert f"run_name {name!r} is not a run folder name" in err and "letters, digits" in err, err
    assert (keep / "recipe.toml").exists() and sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["other-run"]


def test_a_second_writer_of_a_run_folder_is_refused_naming_the_holder(text_run, tmp_path, capsys):
    folder = tmp_path / "runs" / "dup"
    holder = hold_lock(folder)
    try:
        code, out, err = run(capsys, *text_run, "pretrain.text.max_steps=1", "--run-name", "dup")
    finally:
        holder.kill()
        holder.wait()
    assert code == 2, out + err
    assert f"run folder runs/dup is in use by pid {holder.pid} on host " in " ".join(err.split()), err
    assert not (folder / "recipe.toml").exists()


def test_overwrite_replaces_only_a_run_folder(text_run, tmp_path, capsys):
    folder = tmp_path / "runs" / "mine"
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    (folder / "recipe.toml").write_text("# a run\n")
    code, out, err = run(capsys, *text_run, "--run-name", "mine", "--overwrite")
    assert code == 2, out + err
    assert "--overwrite refused" in err and "'thesis.tex'" in err, err
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_a_failed_run_removes_the_folder_it_created_but_never_an_existing_one(text_run, tmp_path, capsys):
    # the dataset is opened after the run folder: a missing one fails a run that created its folder
    missing = "pretrain.text.dataset=no-such-data"
    code, out, err = run(capsys, *text_run, missing, "--run-name", "bad")
    assert code == 2 and "no-such-data" in err, out + err
    assert not (tmp_path / "runs" / "bad").exists()
    old = tmp_path / "runs" / "old"
    old.mkdir(parents=True)
    (old / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    code, out, err = run(capsys, *text_run, missing, "--run-name", "old")
    assert code == 2 and "no-such-data" in err, out + err
    assert (old / "metrics.jsonl").exists()


@pytest.mark.slow
def test_resume_continues_metrics_recipe_history_and_cleans_after_a_kill(text_run, tmp_path, capsys):
    folder = tmp_path / "runs" / "r"
    old_umask = os.umask(0o022)
    try:
        code, out, err = run(capsys, *text_run, "pretrain.text.max_steps=6", "train.save_every=3", "--run-name", "r")
    finally:
        os.umask(old_umask)
    assert code == 0, out + err
    full = _rows(folder)
    # item: epochs count passes over the data, with the fraction of the current one (3 batches per epoch)
    assert [(m["step"], m["epoch"]) for m in full] == [(2, 0.6667), (4, 1.3333), (6, 2.0)], full
    # item: checkpoint folders honour the umask like the run's other files
    for path in (folder / "checkpoints" / "step_6", folder / "checkpoints" / "step_6" / "model.safetensors"):
        assert path.stat().st_mode & 0o077 == (0o055 if path.is_dir() else 0o044), oct(path.stat().st_mode)

    # the run dies (kill -9) after step 5 was logged... while writing a checkpoint: step_6 never completed
    import shutil

    shutil.rmtree(folder / "checkpoints" / "step_6")
    holder = hold_lock(folder, with_temp=True)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    code, out, err = run(capsys, *text_run, "pretrain.text.max_steps=6", "--run-name", "r", "--resume", "auto")
    assert code == 2 and f"stale lock from pid {holder.pid}" in err and "--take-over-lock" in err, err

    # a change of the data order is refused, listed; a change of logging/keeping is only reported
    code, out, err = run(capsys, *text_run, "pretrain.text.max_steps=6", "data.batch_size=4", "--run-name", "r",
                         "--resume", "auto", "--take-over-lock")
    assert code == 2, out + err
    assert "cannot resume" in err and "data.batch_size 8 → 4" in err and "--resume-changed" in err, err
    text = " ".join(out.split())  # the folder was cleaned before the refusal: a dead writer's leftovers
    assert f"took over the stale lock of pid {holder.pid}" in text, text
    assert "removed 1 unfinished checkpoint folder(s) of an interrupted run (.step_5.tmp-k9x; 2.0 MB)" in text, text
    assert not (folder / "checkpoints" / ".step_5.tmp-k9x").exists() and not (folder / LOCK_NAME).exists()

    code, out, err = run(capsys, *text_run, "pretrain.text.max_steps=6", "train.keep_last_n=5", "--run-name", "r",
                         "--resume", "auto")
    assert code == 0, out + err
    text = " ".join(out.split())
    assert "recipe changes since recipe.toml: train.keep_last_n 0 → 5" in text, text
    assert "dropped 2 row(s) logged after step 3" in text, text
    assert read_holder(folder) is None and not (folder / LOCK_NAME).exists()
    # metrics: no step twice, and the rows after the resume average the same steps as before (bit-identical run)
    assert _rows(folder) == full
    assert (folder / "recipe.toml").read_text().count("keep_last_n = 0") == 1
    assert "keep_last_n = 5" in (folder / "recipe.resume-1.toml").read_text()

    # a resume with fewer steps than done: said plainly, nothing trained, exit 0
    code, out, err = run(capsys, *text_run, "pretrain.text.max_steps=4", "--run-name", "r", "--resume", "auto")
    assert code == 0, out + err
    assert "already reached its target: step 6 of 4; nothing to train" in " ".join(out.split()), out
    assert [p.name for p in list_checkpoints(folder)] == ["step_3", "step_6"]
    assert not (folder / "recipe.resume-2.toml").exists()


def test_recipe_changes_split_exactness_from_the_rest():
    old = '[model]\nsize = "tiny"\ninit = "a"\n[data]\nbatch_size = 8\nnum_workers = 0\n' \
          '[train]\nlr = 0.001\nseed = 1\n[pretrain.vl]\ndataset = ["d"]\nmlm_weight = 0.25\n'
    new = old.replace("batch_size = 8", "batch_size = 16").replace("lr = 0.001", "lr = 0.002") \
        .replace('init = "a"', 'init = "b"').replace("num_workers = 0", "num_workers = 4") \
        .replace('["d"]', '["e"]').replace("seed = 1", "seed = 2")
    breaking, other = recipe_changes(old, new, "pretrain.vl")
    assert breaking == ["data.batch_size 8 → 16", "pretrain.vl.dataset ['d'] → ['e']", "train.seed 1 → 2"]
    assert other == ["data.num_workers 0 → 4", "model.init 'a' → 'b'", "train.lr 0.001 → 0.002"]
    assert recipe_changes(old, old.replace("pretrain.vl", "pretrain.text"), "pretrain.text")[0]  # another stage


def test_the_fp16_loss_scaler_is_saved_and_restored(tmp_path):
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    from vlmo_cli.model.config import get_config
    from vlmo_cli.model.vlmo import VLMo
    from vlmo_cli.train.checkpoint import TrainerState, load_training_state, restore_training_state, save_checkpoint

    Accelerator(cpu=True)  # the state AcceleratedOptimizer reads
    model = VLMo(get_config("tiny", vocab_size=160))

    def optimizer(init_scale: float) -> AcceleratedOptimizer:
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=7)
        scaler.scale(torch.ones(()))  # the scale tensor exists from the first scaled loss on
        return AcceleratedOptimizer(torch.optim.AdamW(model.parameters()), device_placement=False, scaler=scaler)

    saved = optimizer(1024.0)
    saved.scaler.update(256.0)
    path = save_checkpoint(tmp_path, model, saved, TrainerState(step=1))
    blob, _ = load_training_state(path)
    fresh = optimizer(65536.0)
    assert restore_training_state(blob, fresh) is None
    assert fresh.scaler.get_scale() == 256.0 and fresh.scaler.get_growth_interval() == 7
    plain = save_checkpoint(tmp_path / "no-fp16", model, torch.optim.AdamW(model.parameters()), TrainerState(step=1))
    note = restore_training_state(load_training_state(plain)[0], optimizer(8.0))
    assert "no fp16 loss-scaler state" in note


def test_a_checkpoint_being_replaced_when_the_writer_died_is_moved_back(tmp_path):
    from vlmo_cli.train.run_dir import clean_checkpoint_temporaries

    root = tmp_path / "checkpoints"
    old = root / ".step_4.old-4242"  # commit_directory had moved step_4 aside, the new step_4 never arrived
    old.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "training_state.pt", "trainer_state.json"):
        (old / name).write_text("x")
    (root / ".step_4.tmp-abc").mkdir()
    (root / ".step_4.tmp-abc" / "model.safetensors").write_bytes(bytes(1000))
    note = clean_checkpoint_temporaries(tmp_path)
    assert note == ("removed 1 unfinished checkpoint folder(s) of an interrupted run (.step_4.tmp-abc; 0.0 MB); "
                    "restored step_4 that an interrupted write was replacing")
    assert sorted(p.name for p in root.iterdir()) == ["step_4"] and list_checkpoints(tmp_path) == [root / "step_4"]
    assert clean_checkpoint_temporaries(tmp_path) is None


def test_resume_changed_accepts_and_logs_what_breaks_exactness_and_the_history_grows(tmp_path):
    from vlmo_cli.errors import RunFolderError
    from vlmo_cli.train.run_dir import check_resume_recipe, write_recipe

    first = '[data]\nbatch_size = 8\n[train]\nlr = 0.001\n'
    assert write_recipe(tmp_path, first, resumed=False).name == "recipe.toml"
    checkpoint = tmp_path / "checkpoints" / "step_3"
    changed = first.replace("8", "16").replace("0.001", "0.002")
    with pytest.raises(RunFolderError, match="data.batch_size 8 → 16"):
        check_resume_recipe(tmp_path, checkpoint, changed, "pretrain.vl", allow_changed=False)
    lines = check_resume_recipe(tmp_path, checkpoint, changed, "pretrain.vl", allow_changed=True)
    assert lines == ["resuming with changes that break exactness (--resume-changed): data.batch_size 8 → 16",
                     "recipe changes since recipe.toml: train.lr 0.001 → 0.002"]
    assert write_recipe(tmp_path, changed, resumed=True).name == "recipe.resume-1.toml"
    # the next resume compares with the last recipe the run started with, and adds a file
    assert check_resume_recipe(tmp_path, checkpoint, changed, "pretrain.vl", allow_changed=False) == []
    assert write_recipe(tmp_path, changed, resumed=True).name == "recipe.resume-2.toml"
    assert (tmp_path / "recipe.toml").read_text() == first
