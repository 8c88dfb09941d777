"""Helpers shared by the test modules (importable because pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

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
