"""Test-suite setup: offline Hugging Face libraries, two CPU threads, and the optional shared reference folder.

The environment variables are set at import time, before any test module imports ``datasets``/``transformers``,
because those libraries read them once when they are first imported.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` next to the repository (reference fixtures); the test is skipped when it is absent."""
    path = (REPO_ROOT / ".." / "shared").resolve()
    if not path.is_dir():
        pytest.skip(f"shared reference folder {path} is absent (only present in the development checkout)")
    return path


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A folder holding ``demo_data/`` (the synthetic demo datasets, made once per session): run the shipped tiny
    recipe from it, since the recipe's dataset paths are relative (``demo_data/pairs`` …)."""
    from vlmo_cli.data.demo import make_demo

    root = tmp_path_factory.mktemp("demo_root")
    make_demo(root / "demo_data")
    return root


@pytest.fixture()
def in_demo(demo_root, monkeypatch, tmp_path):
    """Run from the demo folder (the tiny recipes' relative dataset paths resolve) and write runs under tmp_path:
    the override to append to a command."""
    monkeypatch.chdir(demo_root)
    return ["train.output_dir=" + str(tmp_path / "runs")]
