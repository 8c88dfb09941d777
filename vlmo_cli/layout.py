"""The on-disk layout, defined once: what a model directory and a run folder hold, how a path given by a user becomes a
model directory, and the atomic writes every writer uses.

Model directory
    ``config.json`` (:class:`~vlmo_cli.model.config.ModelConfig`), ``model.safetensors`` (the weights) and, when the
    model carries its tokenizer, ``tokenizer.json`` / ``vocab.txt`` (+ ``tokenizer_config.json``). Exports and
    conversions add ``README.md``, ``recipe.toml``, ``preprocessing.json`` or ``official_config.json``.

Run folder (``vlmo pretrain`` / ``vlmo finetune``)
    ``recipe.toml`` (the resolved recipe), ``metrics.jsonl``, ``eval/`` (reports of ``vlmo eval``) and
    ``checkpoints/step_N/`` (each a model directory plus ``trainer_state.json`` and ``training_state.pt``), with a
    ``checkpoints/latest`` pointer file holding the newest ``step_N`` name.

Atomic writes
    One durability rule, :mod:`vlmo_cli.outputs`': everything is written into a temporary sibling, its files are
    flushed to disk (``fsync``), and only then is it renamed into place, so a target holds either the previous
    result or the new one. :func:`atomic_file` and :func:`atomic_directory` are the two shapes of it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CheckpointError
from .outputs import (DirKind, apply_umask, atomic_file, make_temp_dir, raise_if_disk_full, replace_directory,
                      sync_to_disk)

__all__ = [
    "CONFIG_NAME", "WEIGHTS_NAME", "TOKENIZER_JSON_NAME", "VOCAB_NAME", "SPM_NAME", "SPM_SUFFIXES", "TOKENIZER_FILES", "TOKENIZER_CONFIG_NAME", "MODEL_CARD_NAME", "RECIPE_NAME",
    "OFFICIAL_CONFIG_NAME", "PREPROCESSING_NAME", "MODEL_FILES", "IMAGE_SUFFIXES", "CHECKPOINTS_DIR", "LATEST_NAME", "METRICS_NAME",
    "TRAINER_STATE_NAME", "TRAINING_STATE_NAME", "EVAL_DIR", "checkpoint_name", "model_dir_kind",
    "has_tokenizer", "tokenizer_files", "resolve_model_dir", "resolve_model_path", "run_folder_of", "find_up",
    "atomic_file", "atomic_directory",
]

# ---------------------------------------------------------------------------------------------------- model directory
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_JSON_NAME = "tokenizer.json"
VOCAB_NAME = "vocab.txt"
#: a SentencePiece model (BEiT-3's ``beit3.spm``), under the name ``XLMRobertaTokenizer`` reads
SPM_NAME = "sentencepiece.bpe.model"
#: suffixes of a SentencePiece model file
SPM_SUFFIXES = (".spm", ".model")
#: tokenizer files, in the order they are looked for (``tokenizer.json`` first)
TOKENIZER_FILES = (TOKENIZER_JSON_NAME, VOCAB_NAME, SPM_NAME)
#: written by the tokenizer next to its vocabulary (lower-casing, special tokens)
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
MODEL_CARD_NAME = "README.md"
RECIPE_NAME = "recipe.toml"
OFFICIAL_CONFIG_NAME = "official_config.json"
PREPROCESSING_NAME = "preprocessing.json"

MODEL_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, *TOKENIZER_FILES, TOKENIZER_CONFIG_NAME, MODEL_CARD_NAME,
                         RECIPE_NAME, OFFICIAL_CONFIG_NAME, PREPROCESSING_NAME})

#: file name suffixes taken for images (folders given to ``prepare``, ``embed``, ``search``), compared lower-cased
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# ---------------------------------------------------------------------------------------------------- run folder
CHECKPOINTS_DIR = "checkpoints"
LATEST_NAME = "latest"
METRICS_NAME = "metrics.jsonl"
TRAINER_STATE_NAME = "trainer_state.json"
TRAINING_STATE_NAME = "training_state.pt"
EVAL_DIR = "eval"
ENVIRONMENT_NAME = "environment.json"
RUN_REPORT_NAME = "report.html"


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint written at ``step`` (``step_N``)."""
    return f"step_{step}"


def model_dir_kind(command: str) -> DirKind:
    """The :class:`~vlmo_cli.outputs.DirKind` of a model directory written by ``command``."""
    return DirKind(command, MODEL_FILES, CONFIG_NAME)


def has_tokenizer(directory: str | Path) -> bool:
    """Whether ``directory`` holds a tokenizer file."""
    d = Path(directory)
    return d.is_dir() and any((d / name).exists() for name in TOKENIZER_FILES)


def tokenizer_files(directory: str | Path) -> dict[str, str]:
    """Tokenizer files present in ``directory`` (to carry them into another model directory)."""
    d = Path(directory)
    return {name: str(d / name) for name in TOKENIZER_FILES if (d / name).exists()}


# ---------------------------------------------------------------------------------------------------- resolving paths
def resolve_model_dir(path: str | Path) -> Path:
    """A model directory from a model dir, a run folder (its newest checkpoint), a ``checkpoints`` folder or a
    ``latest`` pointer file."""
    p = Path(path)
    if p.is_file() and p.name == LATEST_NAME:
        p = p.parent / p.read_text().strip()
    if (p / CONFIG_NAME).exists():
        if not (p / WEIGHTS_NAME).exists():
            raise CheckpointError(f"{p}: not a model directory ({WEIGHTS_NAME} missing)")
        return p
    for root in (p / CHECKPOINTS_DIR, p):
        latest = root / LATEST_NAME
        if latest.is_file():
            target = root / latest.read_text().strip()
            if (target / CONFIG_NAME).exists():
                return target
    if not p.exists():
        raise CheckpointError(f"{p}: no such model directory, run folder or checkpoint file")
    raise CheckpointError(f"{p}: not a model directory (expected {CONFIG_NAME} and {WEIGHTS_NAME}), run folder or checkpoint")


def resolve_model_path(path: str | Path) -> Path:
    """:func:`resolve_model_dir` for anything a model can be loaded from: files (an official ``.pt``, a ``latest``
    pointer resolved) pass as they are."""
    p = Path(path)
    if p.is_file() and p.name != LATEST_NAME:
        return p
    if not p.exists():
        raise CheckpointError(f"{p}: no such model directory, run folder or checkpoint file")
    return resolve_model_dir(p)


def run_folder_of(model_path: str | Path) -> Path | None:
    """The run folder a model directory belongs to (``runs/x`` for ``runs/x/checkpoints/step_N``), else ``None``."""
    p = Path(model_path)
    if (p / CHECKPOINTS_DIR).is_dir():
        return p
    if p.parent.name == CHECKPOINTS_DIR and (p.parent.parent / RECIPE_NAME).exists():
        return p.parent.parent
    return None


def find_up(start: Path, name: str, levels: int = 3) -> Path | None:
    """``name`` in ``start`` or one of its ``levels`` parents (``step_N`` → ``checkpoints`` → run folder)."""
    for directory in [start, *list(start.parents)[:levels]]:
        if (directory / name).exists():
            return directory / name
    return None


# ---------------------------------------------------------------------------------------------------- atomic writes
@contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a new temporary sibling of ``final`` to fill; on success its files are synced, it gets the umask's
    permissions and replaces ``final`` (a previous ``final`` is moved aside and deleted once the rename is done).

    Only the mechanics: what ``final`` may hold is the caller's check (:class:`~vlmo_cli.outputs.DirectoryOutput`
    does both). On failure the temporary is removed and a full disk becomes :class:`~vlmo_cli.errors.OutputError`.
    """
    final = Path(final)
    tmp = make_temp_dir(final)
    try:
        yield tmp
        sync_to_disk(tmp)
        apply_umask(tmp)
        replace_directory(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_if_disk_full(exc, final)
        raise
