"""Export a trained model: a clean safetensors model directory with a README card, or two ONNX retrieval towers.

* :func:`export_safetensors` — ``config.json``, ``model.safetensors`` (weights only, no optimizer state), the
  tokenizer saved with the model (``tokenizer.json``, ``vocab.txt``, ``tokenizer_config.json``),
  ``preprocessing.json``, the run's ``recipe.toml`` when found, and ``README.md``: architecture table, parameter
  counts, training provenance (``trainer_state.json`` / ``recipe.toml``) and evaluation results (``eval/*.json``).
* :func:`export_onnx` — ``image_encoder.onnx`` (``pixel_values`` → ``embedding``) and ``text_encoder.onnx``
  (``input_ids``, ``attention_mask`` → ``embedding``), the L2-normalised dual-encoder embeddings, batch dimension
  dynamic, text length fixed to ``max_text_len``; both graphs are checked against PyTorch with onnxruntime. The
  tokenizer and ``preprocessing.json`` are written next to them.

``preprocessing.json`` states how inputs are prepared (see :func:`preprocessing`): image size, resize rule, channel
order, scaling, mean/std, and the text format and length, for users who feed the model or the ONNX graphs without
this package.

``MODEL_DIR`` may be a model directory, a run checkpoint (``runs/x/checkpoints/step_N``), a checkpoints folder with a
``latest`` pointer, or an official ``.pt`` file — whatever :func:`~vlmo_cli.factory.load_model` accepts.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.transforms import MEAN, STD
from ..errors import CheckpointError, MissingExtraError
from ..factory import load_model, save_model
from ..layout import (CONFIG_NAME, EVAL_DIR, MODEL_CARD_NAME, OFFICIAL_CONFIG_NAME, PREPROCESSING_NAME, RECIPE_NAME,
                      TOKENIZER_CONFIG_NAME, TOKENIZER_FILES, TRAINER_STATE_NAME, find_up, model_dir_kind,
                      resolve_model_dir, tokenizer_files)
from ..model.family import has_task_head, image_embeddings, task_head, text_embeddings
from ..model.flops import parameter_counts
from ..outputs import DirectoryOutput, DirKind, check_directory

#: largest |ONNX − PyTorch| accepted by :func:`export_onnx`
ONNX_TOLERANCE = 1e-4
ONNX_OPSET = 17
EXPORT_SAFETENSORS = "vlmo export"
ONNX_KIND = DirKind("vlmo export --format onnx",
                    frozenset({"image_encoder.onnx", "text_encoder.onnx", "onnx_export.json", *TOKENIZER_FILES,
                               TOKENIZER_CONFIG_NAME, PREPROCESSING_NAME}),
                    "onnx_export.json")


# ---------------------------------------------------------------------- locating the run around a checkpoint
def checkpoint_dir(path: Path) -> Path:
    """The model directory of a model dir, run folder (its newest checkpoint), ``checkpoints`` folder or ``latest``
    pointer; any other path as given (``load_model`` reports what is wrong with it)."""
    if path.is_dir() and not (path / CONFIG_NAME).exists():
        return resolve_model_dir(path)
    return path


def model_tokenizer_files(model_dir: Path) -> dict[str, str]:
    """The tokenizer files saved in a model directory (``extra_files`` of :func:`save_model`), none for a file."""
    if not model_dir.is_dir():
        return {}
    files = tokenizer_files(model_dir)
    if files and (model_dir / TOKENIZER_CONFIG_NAME).exists():
        files[TOKENIZER_CONFIG_NAME] = str(model_dir / TOKENIZER_CONFIG_NAME)
    return files


def preprocessing(cfg, model_dir: Path) -> dict[str, Any]:
    """How inputs are prepared for the model (the eval transform and the tokenizer's text format)."""
    text: dict[str, Any] = {
        "max_length": cfg.max_text_len,
        "format": "[CLS] tokens [SEP], truncated to max_length, padded with [PAD] to max_length",
        "attention_mask": "1 for tokens (special tokens included), 0 for padding",
        "tokenizer": None,
    }
    if model_dir.is_dir() and tokenizer_files(model_dir):
        from ..data.tokenizer import load_tokenizer

        tok = load_tokenizer(model_dir)
        text.update(tokenizer=next(name for name in TOKENIZER_FILES if (model_dir / name).exists()),
                    lowercase=tok.lowercase, vocab_size=tok.vocab_size, pad_id=tok.pad_id, cls_id=tok.cls_id,
                    sep_id=tok.sep_id)
    return {
        "image": {
            "size": [cfg.image_size, cfg.image_size],
            "resize": "whole image to size x size (aspect ratio not kept, no crop)",
            "interpolation": "bicubic",
            "channels": "RGB",
            "layout": "NCHW",
            "scale": "pixel / 255 (to [0, 1]), then (x - mean) / std",
            "mean": list(MEAN),
            "std": list(STD),
        },
        "text": text,
    }


def preprocessing_text(cfg, model_dir: Path) -> str:
    """:func:`preprocessing` as the text of ``preprocessing.json``."""
    return json.dumps(preprocessing(cfg, model_dir), indent=2) + "\n"


@dataclass
class Provenance:
    """What is known about how a model was made."""

    trainer_state: dict[str, Any] | None = None
    recipe: Path | None = None
    eval_results: dict[str, dict[str, Any]] | None = None
    source: str | None = None


def find_provenance(model_dir: str | Path) -> Provenance:
    """Collect ``trainer_state.json``, ``recipe.toml`` and ``eval/*.json`` around a model directory."""
    path = Path(model_dir)
    if path.is_file():
        return Provenance(source=f"official checkpoint {path.name}")
    ckpt = checkpoint_dir(path)
    out = Provenance()
    state = find_up(ckpt, TRAINER_STATE_NAME, levels=0)
    if state is not None:
        try:
            out.trainer_state = json.loads(state.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{state}: unreadable trainer state ({exc})") from exc
    out.recipe = find_up(ckpt, RECIPE_NAME)
    eval_dir = find_up(ckpt, EVAL_DIR)
    if eval_dir is not None and eval_dir.is_dir():
        results = {}
        for f in sorted(eval_dir.glob("*.json")):
            try:
                results[f.stem] = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"{f}: unreadable evaluation result ({exc})") from exc
        out.eval_results = results or None
    official = ckpt / OFFICIAL_CONFIG_NAME
    if official.exists():
        out.source = "converted from an official microsoft/unilm VLMo checkpoint"
    return out


# ---------------------------------------------------------------------- the model card
def _flat_scalars(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    if isinstance(data, dict):
        for k, v in data.items():
            out += _flat_scalars(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(data, (int, float, str, bool)) or data is None:
        out.append((prefix, data))
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _family_rows(cfg) -> tuple[str, list[str]]:
    """The card's description of the family and its family-specific architecture rows."""
    if getattr(cfg, "family", "vlmo") == "beit3":
        return ("BEiT-3 (Image as a Foreign Language): one Multiway Transformer (a vision and a language copy of "
                "every layer) used as a dual encoder (image and text alone; L2-normalised embeddings of the retrieval "
                "head) and on image-text pairs laid out image first (VQA, NLVR2, classification).",
                [f"| expert FFN width | {cfg.ffn_dim} |", "| positions | absolute, one table per modality |",
                 f"| final LayerNorm | {'yes' if cfg.normalize_output else 'no'} |"])
    return ("VLMo (Vision-Language pre-training with Mixture-of-Modality-Experts): one Multiway Transformer used as a "
            "dual encoder (image and text towers, L2-normalised embeddings for retrieval) and as a fusion encoder "
            "(image-text pairs; VQA, NLVR2, image-text matching).",
            [f"| expert MLP width | {cfg.mlp_hidden} |",
             f"| VL experts | blocks {cfg.vlffn_start}–{cfg.depth - 1} |" if cfg.has_vlffn
             else "| VL experts | none |",
             f"| positions | {'shared relative-position bias table' if cfg.relative_position else 'absolute'} |",
             f"| layer scale | {'yes' if cfg.layer_scale_init is not None else 'no'} |"])


def model_card(model: nn.Module, provenance: Provenance, title: str) -> str:
    """README.md of an exported model directory."""
    cfg = model.config
    counts = parameter_counts(model)
    total = sum(counts.values())
    about, rows = _family_rows(cfg)
    lines = [
        f"# {title}",
        "",
        about,
        "",
        "## Architecture",
        "",
        "| field | value |",
        "|---|---|",
        f"| size | {cfg.name} |",
        f"| blocks × width | {cfg.depth} × {cfg.embed_dim} |",
        f"| attention heads | {cfg.num_heads} |",
        *rows,
        f"| image size / patch | {cfg.image_size} px / {cfg.patch_size} px ({cfg.num_image_tokens} image tokens) |",
        f"| text length | {cfg.max_text_len} tokens, vocabulary {cfg.vocab_size} |",
        f"| heads | {', '.join(cfg.heads)} |",
        f"| parameters | {total:,} |",
        "",
        "| component | parameters |",
        "|---|---:|",
        *[f"| {k} | {v:,} |" for k, v in counts.items()],
        "",
        "## Usage",
        "",
        "```python",
        "from vlmo_cli import load_model",
        "",
        "from vlmo_cli.model.family import image_embeddings, text_embeddings",
        "",
        "model = load_model('path/to/this/directory').eval()",
        "image_emb = image_embeddings(model, pixel_values)                # [B, D], L2-normalised",
        "text_emb = text_embeddings(model, input_ids, attention_mask)     # [B, D], L2-normalised",
        "```",
        "",
        "## Training provenance",
        "",
    ]
    known = False
    if provenance.source:
        lines += [f"- {provenance.source}"]
        known = True
    if provenance.recipe is not None:
        lines += [f"- recipe: `{provenance.recipe.name}` (copied next to this card)"]
        known = True
    if provenance.trainer_state:
        lines += ["", "| trainer state | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in _flat_scalars(provenance.trainer_state)[:40]]
        known = True
    if not known:
        lines += ["No training record was found next to the exported model."]
    lines += ["", "## Evaluation results", ""]
    if provenance.eval_results:
        for task, result in provenance.eval_results.items():
            lines += [f"### {task}", "", "| metric | value |", "|---|---:|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in _flat_scalars(result)[:60]]
            lines += [""]
    else:
        lines += ["No evaluation results were found (`eval/*.json` of the run).", ""]
    return "\n".join(lines)


def export_safetensors(model_dir: str | Path, out_dir: str | Path, title: str | None = None,
                       overwrite: bool = False) -> Path:
    """Write a clean model directory (weights, config, tokenizer, recipe, README card) to ``out_dir``.

    ``out_dir`` follows :mod:`vlmo_cli.outputs`: a previous export there is replaced only with ``overwrite``; it may
    not be (or contain) ``model_dir``.
    """
    src = Path(model_dir)
    check_directory(out_dir, model_dir_kind(EXPORT_SAFETENSORS), overwrite=overwrite, inputs=[src])
    model = load_model(src)
    provenance = find_provenance(src)
    ckpt = checkpoint_dir(src)
    extra = model_tokenizer_files(ckpt)
    if provenance.recipe is not None:
        extra[RECIPE_NAME] = str(provenance.recipe)
    family = "BEiT-3" if getattr(model.config, "family", "vlmo") == "beit3" else "VLMo"
    card = model_card(model, provenance, title or f"{family} {model.config.name} ({src.name})")
    texts = {MODEL_CARD_NAME: card + "\n", PREPROCESSING_NAME: preprocessing_text(model.config, ckpt)}
    return save_model(model, out_dir, extra_files=extra, texts=texts, command=EXPORT_SAFETENSORS,
                      overwrite=overwrite, inputs=[src], metadata={"exported_from": src.name})


# ---------------------------------------------------------------------- ONNX towers
class ImageTower(nn.Module):
    """``pixel_values [B, 3, S, S]`` → L2-normalised image embedding ``[B, D]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return image_embeddings(self.model, pixel_values)


class TextTower(nn.Module):
    """``input_ids``, ``attention_mask`` ``[B, T]`` → L2-normalised text embedding ``[B, D]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return text_embeddings(self.model, input_ids, attention_mask)


def _text_inputs(batch: int, cfg, generator: torch.Generator, padded: bool = True):
    ids = torch.randint(1, cfg.vocab_size, (batch, cfg.max_text_len), generator=generator)
    mask = torch.ones(batch, cfg.max_text_len, dtype=torch.long)
    if padded:  # several real lengths, at least one padded sample
        lengths = torch.randint(2, cfg.max_text_len, (batch,), generator=generator)
        mask = (torch.arange(cfg.max_text_len)[None] < lengths[:, None]).long()
    return ids * mask, mask


def _export(tower: nn.Module, args: tuple, path: Path, inputs: list[str]) -> None:
    axes = {name: {0: "batch"} for name in [*inputs, "embedding"]}
    with warnings.catch_warnings():
        # tracing warns about Python control flow on shapes; the traced example takes the general branches
        # (padded attention mask), and the graphs are verified on other batch sizes and masks afterwards
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tower, args, str(path), input_names=inputs, output_names=["embedding"], dynamic_axes=axes,
            opset_version=ONNX_OPSET, dynamo=False,
        )


def require_onnx(runtime: bool = True) -> None:
    """ONNX export needs the ``onnx`` package and, to check the graphs, ``onnxruntime`` (the ``onnx`` extra)."""
    import importlib

    missing = []
    for name in ("onnx", "onnxruntime") if runtime else ("onnx",):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(
            f"ONNX export needs the {' and '.join(missing)} package{'s' if len(missing) > 1 else ''}: "
            'pip install "vlmo-cli[onnx]"'
        )


def export_onnx(model_dir: str | Path, out_dir: str | Path, verify: bool = True, seed: int = 0,
                overwrite: bool = False) -> dict[str, float]:
    """Write ``image_encoder.onnx`` and ``text_encoder.onnx`` to ``out_dir``; return the max |ONNX − PyTorch|.

    The TorchScript-based exporter (``dynamo=False``) is used: the dynamo exporter needs ``onnxscript``, which is
    not a dependency. Tracing runs on a text batch with padding, so the key-padding branch is part of the graph
    (it adds zeros for unpadded rows). Raises ``RuntimeError`` if a difference exceeds :data:`ONNX_TOLERANCE`.
    ``out_dir`` follows :mod:`vlmo_cli.outputs` (a previous ONNX export is replaced only with ``overwrite``); the
    graphs are verified before the folder is renamed into place.
    """
    require_onnx(runtime=verify)
    output = DirectoryOutput(out_dir, ONNX_KIND, overwrite=overwrite, inputs=[model_dir])
    model = load_model(model_dir).eval()
    if not has_task_head(model, "retrieval"):
        head = task_head(model, "retrieval")
        raise CheckpointError(f"{model_dir}: the model has no dual-encoder projections ('{head}' head): no retrieval "
                              "embeddings")
    with output as out:
        return _write_onnx(model, Path(model_dir), out, verify, seed)


def _write_onnx(model: nn.Module, src: Path, out: Path, verify: bool, seed: int) -> dict[str, float]:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    image_tower, text_tower = ImageTower(model).eval(), TextTower(model).eval()
    pixels = torch.randn(2, 3, cfg.image_size, cfg.image_size, generator=g)
    _export(image_tower, (pixels,), out / "image_encoder.onnx", ["pixel_values"])
    _export(text_tower, _text_inputs(2, cfg, g), out / "text_encoder.onnx", ["input_ids", "attention_mask"])
    model.eval()  # the exporter restores the wrappers' mode; keep the reference deterministic
    ckpt = checkpoint_dir(src)
    for name, path in model_tokenizer_files(ckpt).items():
        shutil.copyfile(path, out / name)
    (out / PREPROCESSING_NAME).write_text(preprocessing_text(cfg, ckpt))
    info = {
        "image_encoder.onnx": {"inputs": {"pixel_values": ["batch", 3, cfg.image_size, cfg.image_size]}},
        "text_encoder.onnx": {"inputs": {"input_ids": ["batch", cfg.max_text_len],
                                         "attention_mask": ["batch", cfg.max_text_len]}},
        "output": {"embedding": ["batch", cfg.embed_dim], "normalised": True},
        "opset": ONNX_OPSET,
        "config": cfg.to_dict(),
    }
    (out / "onnx_export.json").write_text(json.dumps(info, indent=2) + "\n")
    return verify_onnx(model, out, seed=seed + 1) if verify else {}


def verify_onnx(model: nn.Module, out_dir: str | Path, seed: int = 1) -> dict[str, float]:
    """Compare both graphs with PyTorch on random inputs (batch 1 and 3, padded and unpadded text)."""
    import onnxruntime as ort

    cfg = model.config
    out = Path(out_dir)
    g = torch.Generator().manual_seed(seed)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    image = ort.InferenceSession(str(out / "image_encoder.onnx"), options, providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(out / "text_encoder.onnx"), options, providers=["CPUExecutionProvider"])
    diffs = {"image_encoder.onnx": 0.0, "text_encoder.onnx": 0.0}
    model.eval()
    with torch.no_grad():
        for batch in (1, 3):
            pixels = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g)
            got = torch.from_numpy(image.run(None, {"pixel_values": pixels.numpy()})[0])
            diffs["image_encoder.onnx"] = max(diffs["image_encoder.onnx"],
                                              (got - image_embeddings(model, pixels)).abs().max().item())
            for padded in (True, False):
                ids, mask = _text_inputs(batch, cfg, g, padded)
                got = torch.from_numpy(text.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0])
                diffs["text_encoder.onnx"] = max(diffs["text_encoder.onnx"],
                                                 (got - text_embeddings(model, ids, mask)).abs().max().item())
    bad = {k: v for k, v in diffs.items() if not v <= ONNX_TOLERANCE}
    if bad:
        raise RuntimeError(f"ONNX export differs from PyTorch by more than {ONNX_TOLERANCE}: {bad}")
    return diffs
