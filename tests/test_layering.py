"""The package's import rule, checked by import-linter's layers contract in pyproject.toml: each floor imports only
the floors below it (function-local imports included), every top-level module has a floor, and nothing in the library
imports ``cli/``. Also: no module imports another module's ``_private`` names."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vlmo_cli"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--config", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_import_goes_down_a_floor():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_function_local_import_breaks_the_contract(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "vlmo_cli", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "vlmo_cli" / "model" / "flops.py", "a", encoding="utf-8") as f:
        f.write("\n\ndef _probe():\n    from ..cli.app import main  # noqa: F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "vlmo_cli.model is not allowed to import vlmo_cli.cli" in result.stdout


def test_no_module_imports_private_names_of_another():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("vlmo_cli")):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {', '.join(private)}")
    assert not wrong, "\n".join(wrong)
