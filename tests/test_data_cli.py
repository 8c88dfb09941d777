"""`vlmo prepare ...` end to end through the CLI entry point."""

from __future__ import annotations

import json

import pytest

from vlmo_cli.cli.app import main
from vlmo_cli.data.store import open_prepared

from test_data_sources import write_image


def run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_demo_inspect_tokenizer(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run(["prepare", "demo", "--out", str(out), "--no-progress"]) == 0
    assert (out / "demo.json").exists() and "demo data" in capsys.readouterr().out
    assert run(["prepare", "demo", "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run(["prepare", "inspect", str(out / "vqa"), "--samples", "1"]) == 0
    text = capsys.readouterr().out
    assert "answers: 16" in text and "what color are the shapes" in text
    tok = tmp_path / "tok"
    assert run(["prepare", "tokenizer", str(out / "text"), "--out", str(tok), "--vocab-size", "100",
                "--method", "words"]) == 0
    assert (tok / "vocab.txt").read_text().splitlines()[0] == "[PAD]"


def test_cli_pairs_with_skips_and_tokenizer(tmp_path, capsys):
    for i in range(3):
        write_image(tmp_path / "imgs" / f"{i}.jpg")
    (tmp_path / "p.jsonl").write_text("\n".join(
        [json.dumps({"image": f"imgs/{i}.jpg", "caption": f"cap {i}"}) for i in range(4)] + ["{bad"]))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cap"]))
    code = run(["prepare", "pairs", str(tmp_path / "p.jsonl"), "--format", "jsonl", "--out", str(tmp_path / "out"),
                "--workers", "2", "--tokenizer", str(vocab), "--no-progress"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "3 rows" in stdout and "2 skipped" in stdout
    data = open_prepared(tmp_path / "out")
    assert data.manifest["tokenizer"]["vocab_size"] == 6 and data.tokenizer_path is not None
    assert run(["prepare", "inspect", str(tmp_path / "out")]) == 0
    assert "p.jsonl:5: malformed JSON line" in capsys.readouterr().out
    assert run(["prepare", "pairs", str(tmp_path / "p.jsonl"), "--format", "xml", "--out", str(tmp_path / "x")]) == 2
    assert "allowed: tsv, csv" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["images", "text"])
def test_cli_images_and_text(tmp_path, command):
    write_image(tmp_path / "src" / "a.png")
    (tmp_path / "src" / "a.txt").write_text("one\ntwo\n")
    assert run(["prepare", command, str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert open_prepared(tmp_path / "out").kind == command


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_cli_val_fraction_of_labelled_rows_with_repeated_images(tmp_path, capsys, seed):
    """20 labelled rows over 8 images (6, 4, 3, 2, 2, 1, 1, 1 rows each): --val-fraction 0.2 holds out whole images
    and about 4 rows, never the 12-16 rows a draw of 20 % of the row keys gave."""
    lines = []
    for image, repeats in enumerate((6, 4, 3, 2, 2, 1, 1, 1)):
        write_image(tmp_path / "imgs" / f"{image}.png", (image * 30, 80, 0))
        lines += [json.dumps({"image": f"imgs/{image}.png", "caption": f"photo {image} take {k}", "label": k % 2})
                  for k in range(repeats)]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    assert run(["prepare", "pairs", str(tmp_path / "data.jsonl"), "--format", "jsonl", "--label-col", "label",
                "--val-fraction", "0.2", "--seed", str(seed), "--out", str(tmp_path / "cls"), "--no-progress"]) == 0
    data = open_prepared(tmp_path / "cls")
    assert data.manifest["splits"]["val"] == 4 and sum(data.manifest["splits"].values()) == 20
    train, val = (set(data.split(s)["image_id"]) for s in ("train", "val"))
    assert not train & val  # split by image
