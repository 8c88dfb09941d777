"""load_torch_file: a pickle that needs code is refused without running it; a damaged file is reported as corrupt."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from helpers import run
from vlmo_cli.safe_load import CorruptFileError, UnsafeFileError, load_torch_file

REFUSED = r"refused: this file needs code execution to load \(pickle\); not loaded"


def leave_mark(path: str) -> None:
    """What the crafted pickle calls: creates a file, so any execution is visible."""
    Path(path).write_text("executed")


class Payload:
    """Unpickling an instance calls :func:`leave_mark` (harmless, observable)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (leave_mark, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "legacy torch.save", "pickle.dump"])
def test_code_executing_pickle_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    obj = {"weights": {"w": torch.ones(3)}, "extra": Payload(marker)}
    if writer == "torch.save":
        torch.save(obj, path)
    elif writer == "legacy torch.save":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(UnsafeFileError, match=REFUSED) as exc:
        load_torch_file(path, "checkpoint")
    message = str(exc.value)
    assert str(path) in message and "leave_mark" in message
    assert "corrupt" not in message and "safe_globals" not in message and "weights_only" not in message
    assert not marker.exists()


def test_pickled_module_is_refused_naming_its_class(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole module, not a state dict: its class would be imported
    with pytest.raises(UnsafeFileError, match=rf"{REFUSED} \(it would call torch\.nn\.modules\.linear\.Linear\)"):
        load_torch_file(path, "checkpoint")


def test_training_args_load_beside_the_weights(tmp_path):
    """unilm's checkpoints (BEiT, BEiT-3, VQ-KD) may store ``args``, an ``argparse.Namespace``: it loads, attributes
    and all; a class beside it is still refused."""
    import argparse

    path = tmp_path / "unilm.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=5e-4, model="beit3_base")}, path)
    loaded = load_torch_file(path, "checkpoint")
    assert loaded["args"].model == "beit3_base" and torch.equal(loaded["model"]["w"], torch.ones(2))
    torch.save({"args": argparse.Namespace(lr=1), "head": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(UnsafeFileError, match=REFUSED):
        load_torch_file(path, "checkpoint")


def test_truncated_file_is_corrupt(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(1000.0)}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match=r"cut\.pt: corrupt or truncated checkpoint \(damaged or incomplete"):
        load_torch_file(cut, "checkpoint")
    assert torch.equal(load_torch_file(good, "checkpoint")["w"], torch.arange(1000.0))


@pytest.mark.parametrize(("content", "reason"), [(b"", "the file is empty"), (b"not torch at all", "not a torch.save")])
def test_empty_or_foreign_file_is_corrupt(tmp_path, content, reason):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=f"corrupt or truncated training state \\({reason}"):
        load_torch_file(path, "training state")


def test_missing_file(tmp_path):
    with pytest.raises(Exception, match=r"nope\.pt: no such checkpoint file"):
        load_torch_file(tmp_path / "nope.pt", "checkpoint")


def test_cli_reports_the_refusal_in_one_line(tmp_path, capsys):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "extra": Payload(marker)}, path)
    code, _, err = run(capsys, "convert", "official", str(path), str(tmp_path / "out"))
    assert code == 2
    assert "refused: this file needs code execution to load (pickle); not loaded" in " ".join(err.split())
    assert "evil.ckpt" in err and "Traceback" not in err and "corrupt" not in err
    assert not marker.exists() and not (tmp_path / "out").exists()
