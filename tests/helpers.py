"""Helpers shared by the test modules (importable because pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import json
from pathlib import Path

from vlmo_cli.cli.app import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    """Run the ``vlmo`` CLI in-process; returns (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def export_pairs(demo_root, tmp_path, n: int, label: bool = False):
    """The first ``n`` demo pairs as image files and a JSONL list (with the shape as label when ``label``)."""
    from vlmo_cli.data.store import open_prepared

    rows = open_prepared(demo_root / "demo_data" / "pairs").split("train").select(range(n))
    lines = []
    for i, row in enumerate(rows):
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(row["image"]["bytes"])
        caption = row["captions"][0]
        item = {"image": str(path), "caption": caption}
        if label:  # the class to learn
            item["label"] = next(s for s in ("circle", "square", "triangle") if s in caption)
        lines.append(json.dumps(item))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "data.jsonl"


#: the tiny VQ-KD tokenizer written by unilm's beit2 code (tests/fixtures/vqkd/README.md): 32 px images in 8 px
#: patches, width 32, 2 blocks, 4 heads, 64 codes of 8 dimensions; its state dict in the released key layout
VQKD_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "vqkd"


def released_vqkd(tmp_path, name: str = "vqkd.pth", container: str = "model", **changes) -> Path:
    """The fixture's state dict saved as a released file would be (``{container: state}``), with ``changes``
    applied (a key mapped to ``None`` is deleted)."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(VQKD_FIXTURE / "state.safetensors"))
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    path = tmp_path / name
    torch.save({container: state} if container else state, path)
    return path


def vqkd_dir(tmp_path) -> Path:
    """The fixture's tokenizer converted into a tokenizer directory (``tmp_path / "vqkd"``)."""
    from vlmo_cli.factory import convert_vqkd

    return convert_vqkd(released_vqkd(tmp_path), tmp_path / "vqkd", num_heads=4)
