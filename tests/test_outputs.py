"""Output folders and files (vlmo_cli.outputs): never destroy what a command did not write, replace a previous result
only with --overwrite, write atomically, clean up after dead writers, honour the umask, report a full disk."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run

from vlmo_cli.factory import save_model
from vlmo_cli.errors import OutputError
from vlmo_cli.model.config import get_config
from vlmo_cli.model.vlmo import VLMo
from vlmo_cli.outputs import MARKER, DirectoryOutput, DirKind, clean_stale, make_temp_dir, make_temp_file

KIND = DirKind("vlmo test", frozenset({"a.txt"}), "a.txt")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("model")
    vocab = root / "vocab.txt"
    vocab.write_text("".join(f"{t}\n" for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle",
                                                 "blue", "square"]))
    save_model(VLMo(get_config("tiny", vocab_size=120)), root / "model", extra_files={"vocab.txt": str(vocab)})
    return root / "model"


@pytest.fixture()
def official_ckpt(tmp_path) -> Path:
    torch.manual_seed(0)
    cfg = get_config("tiny", vocab_size=120, heads=["pooler", "itc", "itm", "mlm"])
    path = tmp_path / "vlmo_tiny.pt"
    # the stored config states what the weights cannot (the text length the relative-position table was built for)
    torch.save({"state_dict": dict(VLMo(cfg).state_dict()),
                "hyper_parameters": {"config": {"max_text_len_of_initckpt": cfg.max_text_len_of_initckpt}}}, path)
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# ---------------------------------------------------------------------------------------------------- item 1
def test_export_refuses_a_folder_with_user_files(model_dir, tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "thesis.txt").write_text("draft")
    for extra in ([], ["--overwrite"]):
        code, _, err = run(capsys, "export", str(model_dir), str(out), *extra)
        assert code == 2, err
        assert str(out) in err and "thesis.txt" in err and "refusing" in err
    assert (out / "thesis.txt").read_text() == "draft"
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]


def test_export_replaces_its_own_result_only_with_overwrite(model_dir, tmp_path, capsys):
    out = tmp_path / "export"
    assert run(capsys, "export", str(model_dir), str(out), "--title", "first")[0] == 0
    assert json.loads((out / MARKER).read_text())["command"] == "vlmo export"
    code, _, err = run(capsys, "export", str(model_dir), str(out), "--title", "second")
    assert code == 2 and "previous result of vlmo export" in err and "--overwrite" in err
    assert "first" in (out / "README.md").read_text()
    code, _, err = run(capsys, "export", str(model_dir), str(out), "--title", "second", "--overwrite")
    assert code == 0, err
    assert "second" in (out / "README.md").read_text()
    assert _leftovers(tmp_path) == []
    (out / "notes.md").write_text("mine")  # a file added by hand: no longer only our result
    code, _, err = run(capsys, "export", str(model_dir), str(out), "--overwrite")
    assert code == 2 and "notes.md" in err
    assert (out / "notes.md").read_text() == "mine"


def test_export_onto_its_own_run_folder_is_refused(model_dir, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "ref"
    shutil.copytree(model_dir, run_dir / "checkpoints" / "step_30")
    (run_dir / "recipe.toml").write_text("[model]\n")
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    for target in (run_dir, run_dir / "checkpoints" / "step_30"):
        code, _, err = run(capsys, "export", str(run_dir / "checkpoints" / "step_30"), str(target), "--overwrite")
        assert code == 2 and "would replace the input" in err, err
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before


def test_onnx_export_is_a_different_command(model_dir, tmp_path, capsys):
    out = tmp_path / "export"
    assert run(capsys, "export", str(model_dir), str(out))[0] == 0
    code, _, err = run(capsys, "export", str(model_dir), str(out), "--format", "onnx", "--overwrite")
    assert code == 2 and "a result of vlmo export" in err
    assert (out / "model.safetensors").exists()


def test_convert_beit_refuses_a_foreign_folder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "convert", "beit", str(tmp_path / "missing.pth"), str(out), "--size", "tiny",
                       "--overwrite")
    assert code == 2 and "keep.txt" in err
    assert (out / "keep.txt").read_text() == "mine"


def test_convert_official_replaces_only_its_own_result(official_ckpt, tmp_path, capsys):
    out = tmp_path / "model"
    assert run(capsys, "convert", "official", str(official_ckpt), str(out))[0] == 0
    code, _, err = run(capsys, "convert", "official", str(official_ckpt), str(out))
    assert code == 2 and "--overwrite" in err
    assert run(capsys, "convert", "official", str(official_ckpt), str(out), "--overwrite")[0] == 0
    assert json.loads((out / MARKER).read_text())["command"] == "vlmo convert official"


def test_prepare_refuses_a_foreign_folder_and_keeps_it(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("one line\nanother line\n")
    out = tmp_path / "data"
    out.mkdir()
    (out / "thesis.txt").write_text("draft")
    code, _, err = run(capsys, "prepare", "text", str(tmp_path / "corpus.txt"), "--out", str(out), "--overwrite",
                       "--no-progress")
    assert code == 2 and "thesis.txt" in err
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]
    code, _, err = run(capsys, "prepare", "text", str(tmp_path), "--out", str(tmp_path), "--no-progress")
    assert code == 2 and "would replace the input" in err


def test_prepare_tokenizer_output_follows_the_rule(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("red circle\nblue square\n")
    args = ["prepare", "tokenizer", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "tok"), "--vocab-size", "60",
            "--method", "words"]
    assert run(capsys, *args)[0] == 0
    code, _, err = run(capsys, *args)
    assert code == 2 and "--overwrite" in err
    assert run(capsys, *args, "--overwrite")[0] == 0


def test_empty_folder_is_used(tmp_path):
    (tmp_path / "out").mkdir()
    with DirectoryOutput(tmp_path / "out", KIND) as tmp:
        (tmp / "a.txt").write_text("x")
    assert (tmp_path / "out" / "a.txt").read_text() == "x"


def test_layout_without_marker_counts_as_previous_result(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_text("old")  # written before markers existed
    with pytest.raises(OutputError, match="--overwrite"):
        DirectoryOutput(tmp_path / "out", KIND)
    with DirectoryOutput(tmp_path / "out", KIND, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (tmp_path / "out" / "a.txt").read_text() == "new"


def test_an_existing_file_is_not_a_folder(tmp_path):
    (tmp_path / "out").write_text("mine")
    with pytest.raises(OutputError, match="not a directory"):
        DirectoryOutput(tmp_path / "out", KIND, overwrite=True)


def test_a_failed_write_keeps_the_previous_result(tmp_path):
    with DirectoryOutput(tmp_path / "out", KIND) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(ZeroDivisionError):
        with DirectoryOutput(tmp_path / "out", KIND, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("half")
            1 / 0
    assert (tmp_path / "out" / "a.txt").read_text() == "old"
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------- item 2
def test_convert_into_the_current_directory_is_refused(official_ckpt, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    code, out, err = run(capsys, "convert", "official", str(official_ckpt), ".")
    assert code == 2 and "Traceback" not in out + err
    assert (work / "notes.txt").read_text() == "mine"
    (work / "notes.txt").unlink()  # also an empty current directory: never renamed away under the shell
    code, _, err = run(capsys, "convert", "official", str(official_ckpt), ".", "--overwrite")
    assert code == 2 and "current directory" in err
    assert work.is_dir() and list(work.iterdir()) == []
    code, _, err = run(capsys, "convert", "official", str(official_ckpt), "..")
    assert code == 2


# ---------------------------------------------------------------------------------------------------- item 3
def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_export_on_a_full_disk(model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "export"
    assert run(capsys, "export", str(model_dir), str(out), "--title", "kept")[0] == 0
    monkeypatch.setattr("safetensors.torch.save_file", _disk_full)
    code, stdout, err = run(capsys, "export", str(model_dir), str(out), "--overwrite")
    assert code == 2, err
    assert f"no space left on device while writing {out}" in err and "Traceback" not in stdout + err
    assert "kept" in (out / "README.md").read_text()
    assert _leftovers(tmp_path) == []


def test_torch_writer_failure_counts_as_full_disk(tmp_path):
    with pytest.raises(OutputError, match="no space left on device while writing"):
        with DirectoryOutput(tmp_path / "out", KIND) as tmp:
            (tmp / "a.txt").write_text("x")
            raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                               "data/0: unexpected pos 64 vs 0")
    assert list(tmp_path.iterdir()) == []


def test_prepare_on_a_full_disk(tmp_path, capsys, monkeypatch):
    (tmp_path / "corpus.txt").write_text("one line\nanother line\n")
    out = tmp_path / "data"
    args = ["prepare", "text", str(tmp_path / "corpus.txt"), "--out", str(out), "--no-progress"]
    assert run(capsys, *args)[0] == 0
    manifest = (out / "manifest.json").read_text()
    import datasets

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", _disk_full)
    code, stdout, err = run(capsys, *args, "--overwrite")
    assert code == 2 and f"no space left on device while writing {out}" in err
    assert "Traceback" not in stdout + err
    assert (out / "manifest.json").read_text() == manifest
    assert _leftovers(tmp_path) == []


def _mount_tmpfs(mount: Path, kib: int) -> None:
    """A real tmpfs of ``kib`` KiB at ``mount`` (root only; the test is skipped where mounting is not allowed)."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def test_export_onto_a_really_full_disk(tmp_path, capsys):
    torch.manual_seed(0)
    model = tmp_path / "small"
    save_model(VLMo(get_config("tiny", vocab_size=120, depth=1, vlffn_start=1, embed_dim=64, num_heads=2)), model)
    size = sum(p.stat().st_size for p in model.iterdir())
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, int(size * 1.5) // 1024)  # one export fits, two do not
    try:
        out = disk / "export"
        assert run(capsys, "export", str(model), str(out), "--title", "kept")[0] == 0
        code, stdout, err = run(capsys, "export", str(model), str(out), "--overwrite")
        assert code == 2 and f"no space left on device while writing {out}" in err, err
        assert "Traceback" not in stdout + err
        assert "kept" in (out / "README.md").read_text()
        assert sorted(p.name for p in disk.iterdir()) == ["export"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ---------------------------------------------------------------------------------------------------- item 4
def _temp_of_dead_writer(final: Path, role: str = "tmp") -> Path:
    """What a writer killed with -9 leaves: a temporary named after its (now finished) process."""
    code = (f"import os, pathlib; from vlmo_cli.outputs import make_temp_dir; t = make_temp_dir({str(final)!r}); "
            f"(t / 'half').write_text('x'); t.rename(t.with_name(t.name.replace('.tmp-', '.{role}-'))); "
            f"os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    (left,) = [p for p in final.parent.iterdir() if p.name.startswith(f".{final.name}.{role}-")]
    return left


def test_next_prepare_removes_temporaries_of_dead_writers(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("one line\nanother line\n")
    out = tmp_path / "data"
    dead = _temp_of_dead_writer(out)
    live = make_temp_dir(out)  # this process is alive: its temporary stays
    other_host = tmp_path / f".data.tmp-1@not-{socket.gethostname()}.0123abcd"
    other_host.mkdir()
    code, _, err = run(capsys, "prepare", "text", str(tmp_path / "corpus.txt"), "--out", str(out), "--no-progress")
    assert code == 0, err
    assert not dead.exists() and f"removed {dead}" in err and "died" in err
    assert live.is_dir() and other_host.is_dir()
    assert err.count("note: removed") == 1


def test_moved_aside_previous_result_of_a_dead_writer_is_restored(tmp_path):
    final = tmp_path / "out"
    old = _temp_of_dead_writer(final, role="old")
    notes: list[str] = []
    clean_stale(final, notify=notes.append)
    assert (final / "half").read_text() == "x" and not old.exists()
    assert len(notes) == 1 and "restored" in notes[0]


# ---------------------------------------------------------------------------------------------------- item 6
@pytest.fixture()
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _modes(root: Path) -> set[tuple[str, int]]:
    return {("d" if p.is_dir() else "f", p.stat().st_mode & 0o777) for p in [root, *root.rglob("*")]}


def test_written_files_follow_the_umask(model_dir, tmp_path, capsys, umask_022):
    assert run(capsys, "export", str(model_dir), str(tmp_path / "export"))[0] == 0
    assert _modes(tmp_path / "export") == {("d", 0o755), ("f", 0o644)}
    (tmp_path / "corpus.txt").write_text("one line\nanother line\n")
    assert run(capsys, "prepare", "text", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "data"),
               "--no-progress")[0] == 0
    assert _modes(tmp_path / "data") == {("d", 0o755), ("f", 0o644)}
    assert _modes(make_temp_file(tmp_path / "x.json")) == {("f", 0o644)}


# ---------------------------------------------------------------------------------------------------- single files
def test_embed_output_file_follows_the_rule(model_dir, tmp_path, capsys, umask_022):
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\na blue square\n")
    out = tmp_path / "emb.safetensors"
    args = ["embed", "--model", str(model_dir), "--texts", str(texts), "--out", str(out)]
    assert run(capsys, *args)[0] == 0
    assert out.stat().st_mode & 0o777 == 0o644
    code, _, err = run(capsys, *args)
    assert code == 2 and "previous result of vlmo embed" in err and "--overwrite" in err
    assert run(capsys, *args, "--overwrite")[0] == 0
    foreign = tmp_path / "weights.safetensors"
    foreign.write_bytes(b"not written by vlmo embed")
    code, _, err = run(capsys, "embed", "--model", str(model_dir), "--texts", str(texts), "--out", str(foreign),
                       "--overwrite")
    assert code == 2 and "was not written by vlmo embed" in err
    assert foreign.read_bytes() == b"not written by vlmo embed"
    assert _leftovers(tmp_path) == []


def test_eval_report_follows_the_rule(tmp_path, capsys, umask_022):
    answers = [{"answer": "red", "answer_id": i + 1} for i in range(10)]
    (tmp_path / "q.json").write_text(json.dumps({"questions": [{"question_id": 1, "image_id": 1, "question": "?"}]}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": [
        {"question_id": 1, "answer_type": "other", "question_type": "what color", "answers": answers}]}))
    (tmp_path / "r.json").write_text(json.dumps([{"question_id": 1, "answer": "red"}]))
    out = tmp_path / "report.json"
    args = ["eval", "vqa", "--predictions", str(tmp_path / "r.json"), "--questions", str(tmp_path / "q.json"),
            "--annotations", str(tmp_path / "a.json"), "--out", str(out)]
    assert run(capsys, *args)[0] == 0
    assert out.stat().st_mode & 0o777 == 0o644
    code, _, err = run(capsys, *args)
    assert code == 2 and "previous result of vlmo eval" in err and "--overwrite" in err
    assert run(capsys, *args, "--overwrite")[0] == 0
    out.write_text("my notes\n")
    code, _, err = run(capsys, *args, "--overwrite")
    assert code == 2 and "was not written by vlmo eval" in err
    assert out.read_text() == "my notes\n"
    code, _, err = run(capsys, *args[:-1], str(tmp_path / "r.json"), "--overwrite")  # the report onto its input
    assert code == 2 and "would replace the input" in err
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------- item 5
_PREPARE_AND_WAIT = """
import sys, time
from vlmo_cli.outputs import DirectoryOutput, DirKind
out = DirectoryOutput(sys.argv[1], DirKind("vlmo prepare"))
out.open()
print("writing", flush=True)
time.sleep(60)
"""


def test_two_prepares_into_one_output_cannot_both_write(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("one line\nanother line\n")
    out = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-c", _PREPARE_AND_WAIT, str(out)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert proc.stdout.readline().strip() == "writing"
        code, _, err = run(capsys, "prepare", "text", str(tmp_path / "corpus.txt"), "--out", str(out),
                           "--no-progress")
        assert code == 2 and f"{out} is being written" in err and f"pid {proc.pid}" in err, err
        assert not out.exists()
    finally:
        proc.kill()
        proc.wait()
    # killed with -9: its temporary and its lock are cleaned up by the next prepare, which then succeeds
    code, _, err = run(capsys, "prepare", "text", str(tmp_path / "corpus.txt"), "--out", str(out), "--no-progress")
    assert code == 0, err
    assert "took over the lock" in err and "note: removed" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "data"]


def test_checkpoint_writer_helpers_follow_the_umask(tmp_path, umask_022):
    from safetensors.torch import save_file

    from vlmo_cli.layout import atomic_directory

    final = tmp_path / "checkpoints" / "step_1"
    with atomic_directory(final) as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # safetensors itself writes 0600
    assert _modes(final) == {("d", 0o755), ("f", 0o644)}
