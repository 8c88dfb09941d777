"""Helpers shared by the test modules (importable because pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import json

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
