"""Making models from what a user names, above the network (:mod:`vlmo_cli.model`) and the foreign-format readers
(:mod:`vlmo_cli.interop`): load a model directory, a run folder or an official checkpoint; save a model directory;
convert official, BEiT or BEiT-3 weights into one, and a VQ-KD visual tokenizer into a tokenizer directory; read a
training init source; and the inference wrapper (a model with its tokenizer on a device) that evaluation, embedding,
search and serving use.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, ConfigError, VlmoError
from .layout import (CONFIG_NAME, OFFICIAL_CONFIG_NAME, SPM_NAME, SPM_SUFFIXES, TOKENIZER_FILES, VOCAB_NAME,
                     WEIGHTS_NAME, has_tokenizer, model_dir_kind, resolve_model_dir, resolve_model_path)
from .outputs import DirectoryOutput, check_directory

if TYPE_CHECKING:
    import torch

    from .data.tokenizer import TextTokenizer
    from .model.config import ModelConfig
    from .model.vlmo import VLMo

CONVERT_OFFICIAL = "vlmo convert official"
CONVERT_BEIT = "vlmo convert beit"


# ---------------------------------------------------------------------------------------------------- model directories
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
    from safetensors.torch import save_file

    from .model.weights import state_dict_for_saving

    with DirectoryOutput(directory, model_dir_kind(command), overwrite=overwrite, inputs=inputs) as tmp:
        model.config.save(tmp / CONFIG_NAME)
        save_file(state_dict_for_saving(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt", **(metadata or {})})
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        for name, text in (texts or {}).items():
            (tmp / name).write_text(text)
    return Path(directory)


def vocab_files(vocab: str | Path | None) -> dict[str, str]:
    """``extra_files`` entry for :func:`save_model` carrying a vocabulary (``vocab.txt``, ``tokenizer.json`` or a
    SentencePiece model, saved as ``sentencepiece.bpe.model``)."""
    if vocab is None:
        return {}
    vocab = Path(vocab)
    if not vocab.is_file():
        raise CheckpointError(f"{vocab}: no such vocabulary file")
    if vocab.suffix in SPM_SUFFIXES:
        return {SPM_NAME: str(vocab)}
    return {vocab.name if vocab.name in TOKENIZER_FILES else VOCAB_NAME: str(vocab)}


def load_config(model_dir: str | Path):
    """The config of a model directory: a :class:`ModelConfig`, or a
    :class:`~vlmo_cli.model.beit3_config.Beit3Config` when its ``config.json`` says ``"family": "beit3"`` (an
    unreadable one is a :class:`CheckpointError`)."""
    from .model.beit3_config import Beit3Config, is_beit3_config
    from .model.config import ModelConfig
    from .model.vqkd import is_vqkd_config

    path = Path(model_dir) / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        data = None  # ModelConfig.load says what is wrong with it
    if is_vqkd_config(data):
        raise CheckpointError(f"{model_dir}: a VQ-KD visual tokenizer (`{CONVERT_VQKD}`), not a VLMo or BEiT-3 model; "
                              'it serves as pretrain.mdm.visual_tokenizer (target = "vqkd")')
    beit3 = is_beit3_config(data)
    try:
        return (Beit3Config if beit3 else ModelConfig).load(path)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc


def load_model(path: str | Path, device: str | torch.device = "cpu", strict: bool = True, **config_overrides):
    """Load a model directory, a run folder or checkpoint (``runs/x/checkpoints/step_N``, ``latest``) or an official
    ``.pt`` checkpoint.

    ``config_overrides`` (e.g. ``image_size=384``) rebuild the model with position information resized.
    """
    path = Path(path)
    if path.is_file() and path.name != "latest":
        return load_official(path, **config_overrides).to(device)
    path = resolve_model_dir(path)
    return _load_model_dir(path, load_config(path), device, strict, **config_overrides)


def _load_model_dir(model_dir: Path, cfg, device, strict: bool = True, **config_overrides):
    """The model of an already resolved model directory whose config is ``cfg``, in its family (VLMo or BEiT-3)."""
    from .model.beit3_config import Beit3Config
    from .model.weights import build_model, read_weights

    build = build_beit3 if isinstance(cfg, Beit3Config) else build_model
    return build(read_weights(model_dir / WEIGHTS_NAME), cfg, str(model_dir), strict, **config_overrides).to(device)


# ---------------------------------------------------------------------------------------------------- official VLMo
def load_official(path: str | Path, num_heads: int | None = None, text_table_len: int | None = None,
                  **config_overrides: Any):
    """Build a :class:`~vlmo_cli.model.vlmo.VLMo` from an official checkpoint file.

    ``num_heads`` / ``text_table_len`` state what the checkpoint cannot tell (see
    :func:`~vlmo_cli.interop.official.infer_architecture`); ``config_overrides`` (e.g. ``image_size=384``) resize
    position information as the official loader does.
    """
    from .interop.official import read_official
    from .model.weights import build_model

    state, _, inferred = read_official(path, num_heads, text_table_len)
    return build_model(state, inferred.config, str(path), **config_overrides)


def convert_official(
    checkpoint: str | Path,
    out_dir: str | Path,
    image_size: int | None = None,
    vocab: str | Path | None = None,
    num_heads: int | None = None,
    text_table_len: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an official checkpoint into a model directory (config.json, model.safetensors, tokenizer files).

    ``out_dir`` follows :mod:`vlmo_cli.outputs`: a previous conversion there is replaced only with ``overwrite``.
    The weights' metadata record the source file and, under ``inferred``, where each field not fixed by the
    weights came from (:meth:`~vlmo_cli.interop.official.Inferred.describe`).
    """
    from .interop.official import read_official
    from .model.weights import build_model

    kind, inputs = model_dir_kind(CONVERT_OFFICIAL), [checkpoint, vocab]
    check_directory(out_dir, kind, overwrite=overwrite, inputs=inputs)
    state, official, inferred = read_official(checkpoint, num_heads, text_table_len)
    overrides = {"image_size": image_size} if image_size else {}
    model = build_model(state, inferred.config, str(checkpoint), **overrides)
    texts = {} if official is None else {OFFICIAL_CONFIG_NAME: json.dumps(official, indent=2, default=str) + "\n"}
    metadata = {"source": f"official:{Path(checkpoint).name}", "inferred": inferred.describe()}
    return save_model(model, out_dir, extra_files=vocab_files(vocab), texts=texts, command=CONVERT_OFFICIAL,
                      overwrite=overwrite, inputs=inputs, metadata=metadata)


# ---------------------------------------------------------------------------------------------------- BEiT
def convert_beit_to_dir(
    checkpoint: str | Path,
    out_dir: str | Path,
    cfg: ModelConfig,
    vocab: str | Path | None = None,
    overwrite: bool = False,
    config_by: str = "config",
    heads_by: str | None = None,
    **options,
) -> Path:
    """:func:`~vlmo_cli.interop.beit.convert_beit` written as a model directory (config.json, model.safetensors,
    vocabulary if given).

    ``out_dir`` follows :mod:`vlmo_cli.outputs`: a previous conversion there is replaced only with ``overwrite``.
    ``config_by`` / ``heads_by`` say where ``cfg`` and its head count were chosen (e.g. ``"option --size base"``);
    the weights' metadata record them under ``inferred`` (:func:`~vlmo_cli.interop.beit.describe_sources`).
    """
    from .interop.beit import convert_beit, describe_sources
    from .interop.official import read_checkpoint

    kind, inputs = model_dir_kind(CONVERT_BEIT), [checkpoint, vocab]
    check_directory(out_dir, kind, overwrite=overwrite, inputs=inputs)
    state, _ = read_checkpoint(checkpoint)
    model = convert_beit(state, cfg, source=str(checkpoint), **options)
    metadata = {"source": f"beit:{Path(checkpoint).name}", "inferred": describe_sources(state, cfg, config_by, heads_by)}
    return save_model(model, out_dir, extra_files=vocab_files(vocab), command=CONVERT_BEIT, overwrite=overwrite,
                      inputs=inputs, metadata=metadata)


# ---------------------------------------------------------------------------------------------------- BEiT-3
CONVERT_BEIT3 = "vlmo convert beit3"


def build_beit3(state: dict[str, torch.Tensor], cfg, source: str, strict: bool = True, **config_overrides):
    """A :class:`~vlmo_cli.model.beit3.Beit3` of ``cfg`` holding ``state``; ``image_size`` among
    ``config_overrides`` resizes the image position table, other overrides must not change a weight's shape."""
    import torch

    from .interop.beit3 import adapt_state
    from .model.beit3 import Beit3
    from .model.weights import load_state_dict_checked

    if config_overrides:
        new = cfg.replace(**config_overrides)
        state, cfg = adapt_state(state, cfg, new), new
    if strict:  # every weight comes from ``state``: skip the random initialisation
        with torch.device("meta"):
            model = Beit3(cfg).to_empty(device="cpu")
    else:
        model = Beit3(cfg)
    load_state_dict_checked(model, state, source=source, strict=strict)
    return model


def is_beit3_dir(path: str | Path) -> bool:
    """Whether ``path`` resolves to a model directory whose config is a BEiT-3 one (``"family": "beit3"``)."""
    from .model.beit3_config import is_beit3_config

    try:
        data = json.loads((resolve_model_dir(path) / CONFIG_NAME).read_text())
    except (CheckpointError, OSError, json.JSONDecodeError):
        return False
    return is_beit3_config(data)


def load_beit3(path: str | Path, device: str | torch.device = "cpu", **config_overrides):
    """Load a BEiT-3 model directory (or a run folder / ``latest`` pointer resolving to one)."""
    from .model.beit3_config import Beit3Config

    directory = resolve_model_dir(path)
    try:
        cfg = Beit3Config.load(directory / CONFIG_NAME)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    return _load_model_dir(directory, cfg, device, **config_overrides)


def read_beit3_init_source(source: str, num_heads: int | None = None):
    """``(state_dict, its Beit3Config)`` of a BEiT-3 training init source: a BEiT-3 model directory, run folder or
    checkpoint, or a released BEiT-3 checkpoint file (converted as ``vlmo convert beit3`` does; ``num_heads`` when
    it is no released architecture)."""
    from .model.beit3_config import Beit3Config

    path = source[len("beit3:"):] if source.startswith("beit3:") else source
    if Path(path).is_file():
        from .interop.beit3 import convert_state
        from .interop.official import read_checkpoint

        state, _ = read_checkpoint(path)
        converted = convert_state(state, path, num_heads=num_heads)
        return converted.state, converted.config
    return _directory_init_source(path, Beit3Config, f"{source}: a VLMo model directory cannot initialise a BEiT-3 "
                                  "model ([model] family = \"beit3\"); give a BEiT-3 one (e.g. from `vlmo convert beit3`)")


def convert_beit3(checkpoint: str | Path, out_dir: str | Path, *, num_heads: int | None = None,
                  image_size: int | None = None, drop_unexpected: bool = False, overwrite: bool = False) -> Path:
    """Convert a released BEiT-3 checkpoint file (:mod:`vlmo_cli.interop.beit3`) into a model directory
    (config.json with ``family: "beit3"``, model.safetensors); ``out_dir`` follows :mod:`vlmo_cli.outputs`."""
    from .interop.beit3 import convert_state
    from .interop.official import read_checkpoint

    kind, inputs = model_dir_kind(CONVERT_BEIT3), [checkpoint]
    check_directory(out_dir, kind, overwrite=overwrite, inputs=inputs)
    state, _ = read_checkpoint(checkpoint)
    converted = convert_state(state, str(checkpoint), num_heads=num_heads, image_size=image_size,
                              drop_unexpected=drop_unexpected)
    model = build_beit3(converted.state, converted.config, str(checkpoint))
    metadata = {"source": f"beit3:{Path(checkpoint).name}", "inferred": converted.describe()}
    return save_model(model, out_dir, command=CONVERT_BEIT3, overwrite=overwrite, inputs=inputs, metadata=metadata)


# ---------------------------------------------------------------------------------------------------- VQ-KD
CONVERT_VQKD = "vlmo convert vqkd"


def convert_vqkd(checkpoint: str | Path, out_dir: str | Path, *, num_heads: int | None = None,
                 overwrite: bool = False) -> Path:
    """Convert a released BEiT v2 VQ-KD tokenizer file (:mod:`vlmo_cli.interop.vqkd`) into a tokenizer directory
    (config.json with ``family: "vqkd"``, model.safetensors); ``out_dir`` follows :mod:`vlmo_cli.outputs`."""
    from .interop.official import read_checkpoint
    from .interop.vqkd import convert_state
    from .model.vqkd import build_vqkd

    kind, inputs = model_dir_kind(CONVERT_VQKD), [checkpoint]
    check_directory(out_dir, kind, overwrite=overwrite, inputs=inputs)
    state, _ = read_checkpoint(checkpoint)
    converted = convert_state(state, str(checkpoint), num_heads=num_heads)
    model = build_vqkd(converted.state, converted.config, str(checkpoint))
    metadata = {"source": f"vqkd:{Path(checkpoint).name}", "inferred": converted.describe()}
    return save_model(model, out_dir, command=CONVERT_VQKD, overwrite=overwrite, inputs=inputs, metadata=metadata)


def vqkd_config(path: str | Path):
    """The :class:`~vlmo_cli.model.vqkd.VqkdConfig` of a tokenizer directory (from ``vlmo convert vqkd``), after
    checking that it holds its config and weights."""
    from .model.vqkd import VqkdConfig

    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such VQ-KD tokenizer directory")
    if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{directory}: not a VQ-KD tokenizer directory (expected {CONFIG_NAME} and "
                              f"{WEIGHTS_NAME}, as `{CONVERT_VQKD}` writes)")
    try:
        return VqkdConfig.load(directory / CONFIG_NAME)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc


def load_vqkd(path: str | Path, device: str | torch.device = "cpu"):
    """The frozen :class:`~vlmo_cli.model.vqkd.VqkdTokenizer` of a tokenizer directory (from ``vlmo convert vqkd``),
    in eval mode on ``device``."""
    from .model.vqkd import build_vqkd
    from .model.weights import read_weights

    cfg = vqkd_config(path)
    return build_vqkd(read_weights(Path(path) / WEIGHTS_NAME), cfg, str(path)).to(device)


# ---------------------------------------------------------------------------------------------------- init sources
def read_init_source(source: str, target: ModelConfig) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """``(state_dict, its config)`` of a training init source: ``beit:PATH`` (BEiT weights mapped onto ``target``),
    ``official:PATH`` or a checkpoint file (official VLMo), else a model directory / run folder / checkpoint."""
    if source.startswith("beit:"):
        from .interop.beit import convert_beit

        model = convert_beit(source[len("beit:"):], target)
        return model.state_dict(), model.config
    path = source[len("official:"):] if source.startswith("official:") else source
    if Path(path).is_file():
        from .interop.official import IGNORED_KEYS, infer_config, read_checkpoint

        state, official = read_checkpoint(path)
        state = {k: v for k, v in state.items() if k not in IGNORED_KEYS}
        # what the weights cannot tell (heads without a relative table, the table's text rows) is the recipe's
        return state, infer_config(state, official, source=path, num_heads=target.num_heads,
                                   text_table_len=target.max_text_len_of_initckpt, given_by="recipe")
    from .model.config import ModelConfig

    return _directory_init_source(path, ModelConfig, f"{source}: a BEiT-3 model directory cannot initialise a VLMo "
                                  "model; set [model] family = \"beit3\" (and a BEiT-3 size) to fine-tune it")


def _directory_init_source(path: str, family_config: type, wrong_family: str):
    """``(state_dict, config)`` of a model directory / run folder / checkpoint whose config is a ``family_config``;
    ``wrong_family`` is the message when it is of the other family."""
    from .model.weights import read_weights

    model_dir = resolve_model_dir(path)
    cfg = load_config(model_dir)
    if not isinstance(cfg, family_config):
        raise CheckpointError(wrong_family)
    return read_weights(model_dir / WEIGHTS_NAME), cfg


# ---------------------------------------------------------------------------------------------------- inference
@dataclass
class InferenceModel:
    """A model ready for inference.

    Attributes:
        model: the network, in eval mode, on ``device``.
        path: the model directory (or official ``.pt`` file) it was read from.
        tokenizer: the tokenizer stored with the model (or the one given), ``None`` when there is none.
        device: where it runs.
        image_size: the resolution it runs at.
        resized_from: the stored resolution when position information was resized on load, else ``None``.
    """

    model: VLMo
    path: Path
    tokenizer: TextTokenizer | None
    device: torch.device
    image_size: int
    resized_from: int | None = None

    def require_tokenizer(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise CheckpointError(
                f"{self.path}: no tokenizer stored with the model (tokenizer.json or vocab.txt); pass --tokenizer"
            )
        return self.tokenizer

    def require_head(self, head: str, how: str) -> None:
        """Raise a :class:`CheckpointError` naming the model's heads when it has no head for the task ``head``
        (``vqa``, ``nlvr2``, ``classify``, ``retrieval``, ``itm``: named per family by
        :data:`~vlmo_cli.model.family.TASK_HEADS`); ``how`` says what needs it or how to get a model that has it."""
        from .model.family import task_head

        heads = self.model.config.heads
        head = task_head(self.model, head) or head
        if head not in heads:
            raise CheckpointError(f"{self.path}: the model has no {head!r} head (heads: "
                                  f"{', '.join(heads) or 'none'}); {how}")

    def fingerprint(self) -> str:
        """Identity of the weights (path, size, modification time) and the resolution: keys the search cache."""
        weights = self.path / WEIGHTS_NAME if self.path.is_dir() else self.path
        stat = weights.stat()
        return json.dumps([str(weights.resolve()), stat.st_size, stat.st_mtime_ns, self.image_size])


#: what :meth:`InferenceModel.require_head` says when re-ranking finds no ITM head
ITM_HOW = ("re-ranking needs the ITM head of a stage-3 pre-trained model, or of one retrieval fine-tuned with "
           "with_itm = true")


def pick_device(device: str | None = None) -> torch.device:
    """``device`` as given, else CUDA when available, else CPU."""
    import torch

    if device:
        try:
            return torch.device(device)
        except RuntimeError as exc:
            raise VlmoError(f"--device {device!r} is not a torch device ({exc})") from None
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_inference_model(
    path: str | Path,
    *,
    image_size: int | None = None,
    device: str | torch.device | None = None,
    tokenizer: TextTokenizer | str | Path | None = None,
) -> InferenceModel:
    """Load a model for inference: resolve run folders, resize to ``image_size`` when asked, find its tokenizer.

    Args:
        path: model directory, run folder, ``checkpoints/step_N`` or an official ``.pt`` file.
        image_size: run at this resolution (position information is resized on load); default: the stored one.
        device: torch device; default CUDA when available.
        tokenizer: a tokenizer object or path; default the one stored in the model directory (if any).
    """
    from .data.tokenizer import TextTokenizer, load_tokenizer

    model_path = resolve_model_path(path)  # resolved once: the config and weights are read from here
    dev = pick_device(device) if not hasattr(device, "type") else device
    cfg = load_config(model_path) if model_path.is_dir() else None
    stored = cfg.image_size if cfg is not None else None
    overrides = {}
    if image_size and (stored is None or image_size != stored):
        overrides["image_size"] = int(image_size)
    if cfg is not None:
        model = _load_model_dir(model_path, cfg, dev, **overrides)
    else:
        model = load_official(model_path, **overrides).to(dev)
    model.eval()
    if isinstance(tokenizer, TextTokenizer):
        tok = tokenizer
    elif tokenizer:
        tok = load_tokenizer(tokenizer)
    elif has_tokenizer(model_path):
        tok = load_tokenizer(model_path)
    else:
        tok = None
    if tok is not None and tok.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"{model_path}: the tokenizer has {tok.vocab_size} tokens but the model only {model.config.vocab_size}"
        )
    resized = stored if overrides and stored is not None else None
    return InferenceModel(model, model_path, tok, dev, model.config.image_size, resized)


def as_inference_model(model: Any, **kwargs: Any) -> InferenceModel:
    """Accept an :class:`InferenceModel` or a path (loaded with ``kwargs``)."""
    return model if isinstance(model, InferenceModel) else load_inference_model(model, **kwargs)
