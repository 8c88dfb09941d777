"""Embedding files: batched dual-encoder embeddings of image files or lines of text (a model loaded by
:func:`vlmo_cli.factory.load_inference_model`), saved as ``.safetensors`` with their ids.

A saved embedding file holds one tensor, ``embeddings`` (``[N, D]`` float32, L2-normalised: dot product = cosine),
and string metadata: ``kind`` (``image`` or ``text``), ``ids`` (a JSON list: image paths, or line numbers),
``texts`` (text files: the JSON list of the texts), ``model``, ``dim``, ``image_size`` / ``max_text_len`` and
``skipped`` (inputs that could not be embedded, with the reason). :func:`load_embeddings` reads it back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError, VlmoError
from ..factory import InferenceModel, as_inference_model
from ..layout import IMAGE_SUFFIXES
from ..model.family import image_embeddings, text_embeddings
from ..outputs import FileKind, check_file, writing_file

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- inputs
def list_images(paths: Iterable[str | Path], *, recursive: bool = True) -> list[Path]:
    """Image files named by ``paths``: files as given, folders expanded (sorted) to files with an image suffix."""
    out: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            found = p.rglob("*") if recursive else p.iterdir()
            out += sorted(f for f in found if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                          and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such image file or folder")
    return out


def read_text_lines(path: str | Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of the non-empty lines of a UTF-8 text file (numbers start at 1)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{p}: text file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text ({exc})") from None
    return [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]


# ---------------------------------------------------------------------------------------------------- embedding
@dataclass
class Embeddings:
    """Embeddings with their ids (image paths or line numbers); ``skipped`` lists inputs that could not be read."""

    kind: str
    embeddings: torch.Tensor
    ids: list[str]
    texts: list[str] | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def image_tensor(path: Path, transform) -> tuple[torch.Tensor | None, str | None]:
    """``(transform(image), None)`` of an image file, or ``(None, reason)`` when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return transform(img.convert("RGB")), None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def embed_image_files(model: InferenceModel, paths: Sequence[str | Path], *, batch_size: int = 64,
                      threads: int = 4) -> Embeddings:
    """Dual-encoder embeddings of image files (eval transform at the model's resolution); unreadable files are
    skipped and listed, never fatal. Each batch is decoded by ``threads`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from ..data.transforms import build_transform

    transform = build_transform(model.image_size, False)
    files = [Path(p) for p in paths]
    ids: list[str] = []
    skipped: list[dict[str, str]] = []
    chunks: list[torch.Tensor] = []
    with ThreadPoolExecutor(max(1, threads)) as pool, torch.no_grad():
        for start in range(0, len(files), batch_size):  # one batch in memory at a time
            batch = files[start:start + batch_size]
            good: list[tuple[Path, torch.Tensor]] = []
            for path, (tensor, reason) in zip(batch, pool.map(lambda f: image_tensor(f, transform), batch)):
                if tensor is None:
                    skipped.append({"id": str(path), "reason": str(reason)})
                    log.warning("skipping unreadable image %s: %s", path, reason)
                else:
                    good.append((path, tensor))
            if good:
                pixels = torch.stack([t for _, t in good]).to(model.device)
                chunks.append(image_embeddings(model.model, pixels).float().cpu())
                ids += [str(p) for p, _ in good]
    emb = torch.cat(chunks) if chunks else torch.zeros(0, model.model.config.embed_dim)
    return Embeddings("image", emb, ids, skipped=skipped, metadata={"image_size": str(model.image_size)})


def encode_texts(model: InferenceModel, texts: Sequence[str], *, batch_size: int = 256,
                 max_text_len: int | None = None) -> torch.Tensor:
    """``[N, D]`` dual-encoder embeddings of ``texts`` (float32, CPU), in the order of ``texts``.

    Texts are encoded shortest first, each batch cut to its longest text (padding costs no compute).
    """
    import numpy as np
    import torch

    from ..data.collate import trim_text_padding

    tok = model.require_tokenizer()
    length = min(max_text_len or model.model.config.max_text_len, model.model.config.max_text_len)
    out = torch.zeros(len(texts), model.model.config.embed_dim)
    if not len(texts):
        return out
    encoded = [tok.encode_batch(list(texts[i:i + 4096]), length) for i in range(0, len(texts), 4096)]
    ids = torch.from_numpy(np.concatenate([e["input_ids"] for e in encoded]))
    mask = torch.from_numpy(np.concatenate([e["attention_mask"] for e in encoded]))
    order = torch.argsort(mask.sum(1), stable=True)
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            batch = trim_text_padding({"input_ids": ids[rows], "attention_mask": mask[rows]})
            out[rows] = text_embeddings(model.model, batch["input_ids"].to(model.device),
                                        batch["attention_mask"].to(model.device)).float().cpu()
    return out


def embed_texts(model: InferenceModel, lines: Sequence[tuple[int, str]] | Sequence[str], *, batch_size: int = 256,
                max_text_len: int | None = None) -> Embeddings:
    """Embeddings of texts; ``lines`` are ``(line number, text)`` pairs (as :func:`read_text_lines`) or strings."""
    pairs = [(n, t) if isinstance(t, str) else t for n, t in enumerate(lines, start=1)] if lines and isinstance(
        lines[0], str) else list(lines)
    texts = [t for _, t in pairs]
    emb = encode_texts(model, texts, batch_size=batch_size, max_text_len=max_text_len)
    length = min(max_text_len or model.model.config.max_text_len, model.model.config.max_text_len)
    return Embeddings("text", emb, [str(n) for n, _ in pairs], texts=texts, metadata={"max_text_len": str(length)})


# ---------------------------------------------------------------------------------------------------- files
def _is_embeddings_file(path: Path) -> bool:
    """Whether ``path`` is a file :func:`save_embeddings` wrote (a safetensors file with its ``kind`` and ``ids``)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta, keys = handle.metadata() or {}, set(handle.keys())
    except Exception:  # noqa: BLE001 - not readable as safetensors: not ours
        return False
    return "kind" in meta and "ids" in meta and keys == {"embeddings"}


EMBEDDINGS = FileKind("vlmo embed", _is_embeddings_file)


def check_embeddings_output(path: str | Path, *, overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
    """Refuse an output that is not a ``.safetensors`` path, or that :mod:`vlmo_cli.outputs` does not let us replace."""
    target = Path(path)
    if target.suffix != ".safetensors":
        raise DataError(f"{target}: the output must be a .safetensors file")
    return check_file(target, EMBEDDINGS, overwrite=overwrite, inputs=inputs)


def save_embeddings(result: Embeddings, path: str | Path, *, model_path: str | Path | None = None,
                    overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
    """Write ``result`` as a safetensors file (``embeddings`` tensor, ids and provenance in the metadata).

    A previous embeddings file at ``path`` is replaced only with ``overwrite``, any other file never.
    """
    from safetensors.torch import save_file

    target = Path(path)
    check_embeddings_output(target, overwrite=overwrite, inputs=inputs)
    meta = {"format": "pt", "kind": result.kind, "ids": json.dumps(result.ids, ensure_ascii=False),
            "dim": str(int(result.embeddings.shape[1])), "count": str(len(result.ids)),
            "skipped": json.dumps(result.skipped, ensure_ascii=False), **result.metadata}
    if result.texts is not None:
        meta["texts"] = json.dumps(result.texts, ensure_ascii=False)
    if model_path is not None:
        meta["model"] = str(model_path)
    with writing_file(target, EMBEDDINGS, overwrite=overwrite, inputs=inputs) as temp:
        save_file({"embeddings": result.embeddings.float().contiguous()}, str(temp), metadata=meta)
    return target


def load_embeddings(path: str | Path) -> Embeddings:
    """Read a file written by :func:`save_embeddings`."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: embeddings file not found")
    try:
        with safe_open(str(p), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
            emb = handle.get_tensor("embeddings")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's problem to fix
        raise DataError(f"{p}: not an embeddings file ({exc})") from None
    texts = json.loads(meta.pop("texts")) if "texts" in meta else None
    ids = json.loads(meta.pop("ids", "[]"))
    skipped = json.loads(meta.pop("skipped", "[]"))
    return Embeddings(meta.pop("kind", "unknown"), emb, ids, texts=texts, skipped=skipped, metadata=meta)


def embed(
    model: InferenceModel | str | Path,
    out: str | Path,
    *,
    images: Sequence[str | Path] | None = None,
    texts: str | Path | None = None,
    batch_size: int = 64,
    max_text_len: int | None = None,
    device: str | None = None,
    image_size: int | None = None,
    overwrite: bool = False,
) -> tuple[Embeddings, Path]:
    """``vlmo embed``: embed image files/folders or the lines of a text file and save them to ``out``.

    ``out`` follows :mod:`vlmo_cli.outputs`: a previous embeddings file is replaced only with ``overwrite``.
    """
    if (images is None or len(images) == 0) == (texts is None):
        raise VlmoError("give either images (--images PATH...) or a text file (--texts FILE), not both")
    inputs = [*(images or []), *([texts] if texts is not None else [])]
    check_embeddings_output(out, overwrite=overwrite, inputs=inputs)
    loaded = as_inference_model(model, device=device, image_size=image_size)
    loaded.require_head("retrieval", "embeddings come from the dual encoder's projections (VLMo: the ITC heads, "
                        "BEiT-3: the retrieval head), and this model has none; use a stage-3 pre-trained or a "
                        "retrieval fine-tuned model")
    if texts is not None:
        lines = read_text_lines(texts)
        if not lines:
            raise DataError(f"{texts}: no non-empty lines to embed")
        result = embed_texts(loaded, lines, batch_size=batch_size, max_text_len=max_text_len)
    else:
        files = list_images(images)
        if not files:
            raise DataError(f"no image files found in {', '.join(str(p) for p in images)}")
        result = embed_image_files(loaded, files, batch_size=batch_size)
        if not len(result):
            raise DataError(f"none of the {len(files)} images could be read (first: {result.skipped[0]['reason']})")
    return result, save_embeddings(result, out, model_path=loaded.path, overwrite=overwrite, inputs=inputs)
