"""A prepared directory whose Arrow data is truncated, overwritten or gone: one line naming the directory and the
file, saying it is damaged and how to re-create it (exit 2), in `prepare inspect` and in training."""

from __future__ import annotations

import shutil

import pytest
from helpers import run


def damaged_copy(src, dst, how: str):
    shutil.copytree(src, dst)
    arrow = next((dst / "data" / "train").glob("*.arrow"))
    data = arrow.read_bytes()
    if how == "truncated":
        arrow.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        arrow.write_bytes(bytes(range(256)) * 20)
    else:
        arrow.unlink()
    return arrow.relative_to(dst)


@pytest.mark.parametrize("how", ["truncated", "garbage", "missing"])
def test_inspect_names_the_damaged_file(demo_root, tmp_path, capsys, how):
    name = damaged_copy(demo_root / "demo_data" / "pairs", tmp_path / "pairs", how)
    code, out, err = run(capsys, "prepare", "inspect", str(tmp_path / "pairs"))
    assert code == 2, err
    line = err.strip()
    assert "Traceback" not in err and len(line.splitlines()) == 1
    assert str(tmp_path / "pairs") in line and "is damaged" in line and "--overwrite" in line
    assert (str(name) if how != "missing" else "data/train") in line


def test_training_on_a_damaged_dataset_names_the_file(demo_root, tmp_path, capsys):
    name = damaged_copy(demo_root / "demo_data" / "images", tmp_path / "images", "truncated")
    code, out, err = run(capsys, "pretrain-vision", "tiny", f"pretrain.vision.dataset={tmp_path / 'images'}",
                         "pretrain.vision.max_steps=2", f"train.output_dir={tmp_path / 'runs'}")
    assert code == 2, err
    assert "Traceback" not in err and f"{name} is damaged" in err and str(tmp_path / "images") in err
