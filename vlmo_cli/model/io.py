"""Model directories: ``config.json`` + ``model.safetensors`` (+ tokenizer files), written atomically.

Writing follows the output rule of :mod:`vlmo_cli.outputs`: a directory holding anything but a previous result of
the same command is never replaced, a previous result only with ``overwrite=True``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, ConfigError
from ..outputs import DirectoryOutput, DirKind, apply_umask, make_temp_dir, replace_directory
from .config import ModelConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


MODEL_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, *TOKENIZER_FILES, "tokenizer_config.json", "README.md",
                         "recipe.toml", "official_config.json", "preprocessing.json"})


def model_dir_kind(command: str) -> DirKind:
    """The :class:`~vlmo_cli.outputs.DirKind` of a model directory written by ``command``."""
    return DirKind(command, MODEL_FILES, CONFIG_NAME)


def atomic_directory(final: Path) -> Path:
    """A new temporary sibling of ``final`` for :func:`commit_directory` (umask permissions, writer in its name)."""
    return make_temp_dir(final)


def commit_directory(tmp: Path, final: Path) -> None:
    """Move a fully written temporary directory into place (replacing ``final``), with the umask's permissions."""
    apply_umask(tmp)
    replace_directory(tmp, final)


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_model(
    model: torch.nn.Module,
    directory: str | Path,
    extra_files: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
    *,
    texts: dict[str, str] | None = None,
    command: str = "save_model",
    overwrite: bool = False,
    inputs: Iterable[str | Path] = (),
) -> Path:
    """Write ``model`` as a model directory. ``extra_files`` maps file names to source paths (tokenizer, …),
    ``texts`` file names to their content (a README card, …).

    ``command`` names the writer in messages and in the directory's marker; a previous result of the same command is
    replaced only with ``overwrite``, anything else never (see :mod:`vlmo_cli.outputs`); ``inputs`` may not be
    replaced.
    """
    with DirectoryOutput(directory, model_dir_kind(command), overwrite=overwrite, inputs=inputs) as tmp:
        model.config.save(tmp / CONFIG_NAME)
        save_file(state_dict_for_saving(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt", **(metadata or {})})
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        for name, text in (texts or {}).items():
            (tmp / name).write_text(text)
    return Path(directory)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({exc})") from exc


def load_model(path: str | Path, device: str | torch.device = "cpu", strict: bool = True, **config_overrides):
    """Load a model directory, a run checkpoint (``runs/x/checkpoints/step_N``) or an official ``.pt`` checkpoint.

    ``config_overrides`` (e.g. ``image_size=384``) rebuild the model with position information resized.
    """
    path = Path(path)
    if path.is_file() and path.name != "latest":
        from ..interop.official import load_official

        return load_official(path, **config_overrides).to(device)
    path = resolve_model_dir(path)
    try:
        cfg = ModelConfig.load(path / CONFIG_NAME)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    return build_model(read_weights(path / WEIGHTS_NAME), cfg, str(path), strict, **config_overrides).to(device)


def build_model(state: dict[str, torch.Tensor], cfg: ModelConfig, source: str, strict: bool = True, **config_overrides):
    """A :class:`VLMo` of ``cfg`` (with ``config_overrides`` applied, position information resized) holding ``state``."""
    from .resize import adapt_state_dict
    from .vlmo import VLMo

    if config_overrides:
        new_cfg = cfg.replace(**config_overrides)
        state = adapt_state_dict(state, cfg, new_cfg)
        cfg = new_cfg
    model = VLMo(cfg)
    load_state_dict_checked(model, state, source=source, strict=strict)
    return model


def vocab_files(vocab: str | Path | None) -> dict[str, str]:
    """``extra_files`` entry for :func:`save_model` carrying a vocabulary (``vocab.txt`` or ``tokenizer.json``)."""
    if vocab is None:
        return {}
    vocab = Path(vocab)
    if not vocab.is_file():
        raise CheckpointError(f"{vocab}: no such vocabulary file")
    return {vocab.name if vocab.name in TOKENIZER_FILES else "vocab.txt": str(vocab)}


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory from a model dir, a run folder (its newest checkpoint), a ``checkpoints`` folder or a
    ``latest`` pointer file."""
    p = Path(path)
    if p.is_file() and p.name == "latest":
        p = p.parent / p.read_text().strip()
    if (p / CONFIG_NAME).exists():
        if not (p / WEIGHTS_NAME).exists():
            raise CheckpointError(f"{p}: not a model directory ({WEIGHTS_NAME} missing)")
        return p
    for root in (p / "checkpoints", p):
        latest = root / "latest"
        if latest.is_file():
            target = root / latest.read_text().strip()
            if (target / CONFIG_NAME).exists():
                return target
    if not p.exists():
        raise CheckpointError(f"{p}: no such model directory, run folder or checkpoint file")
    raise CheckpointError(f"{p}: not a model directory (expected {CONFIG_NAME} and {WEIGHTS_NAME}), run folder or checkpoint")


def load_state_dict_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True):
    """``load_state_dict`` whose mismatches become a :class:`CheckpointError` naming the keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = [f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if strict and missing:
        problems.append(f"missing keys {_few(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if shape:
        problems.append(f"shape mismatches {_few(shape)}")
    if problems:
        raise CheckpointError(f"{source}: weights do not match the architecture: " + "; ".join(problems))
    model.load_state_dict(state, strict=strict)
    return missing, unexpected


def _few(items: list[str], n: int = 8) -> str:
    shown = ", ".join(items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)} in all)"


def tokenizer_files(directory: str | Path) -> dict[str, str]:
    """Tokenizer files present in ``directory`` (to carry them into another model directory)."""
    d = Path(directory)
    return {name: str(d / name) for name in TOKENIZER_FILES if (d / name).exists()}
