"""The model side of ``vlmo serve``: a loaded model, an optional search index, and batched functions (lists in,
lists out) that the HTTP layer feeds through :class:`~vlmo_cli.serve.batching.DynamicBatcher`.

Everything here is plain Python: ``SearchService.open(...)`` then ``service.embed_texts([...])`` etc. work without
a server.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError, VlmoError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ..factory import InferenceModel
    from ..inference.collection_index import ImageIndex

LABEL_FILES = ("labels.json", "answers.json")
THUMBNAIL_PX = 160


def read_image(data: bytes, name: str = "upload") -> Image.Image:
    """The RGB image in ``data``; a :class:`DataError` naming ``name`` when it is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise DataError(f"{name}: the upload is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{name}: not a readable image ({type(exc).__name__})") from None


def load_labels(model_path: Path, labels: str | Path | None) -> list[str] | None:
    """Class names of the VQA / classification head: ``labels`` (a JSON list), else ``labels.json`` or
    ``answers.json`` in the model directory, else ``None`` (predictions then carry indices only)."""
    candidates = [Path(labels)] if labels else [model_path / n for n in LABEL_FILES if model_path.is_dir()]
    for path in candidates:
        if not path.is_file():
            if labels:
                raise DataError(f"{path}: labels file not found")
            continue
        try:
            names = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a JSON list of class names ({exc})") from None
        if not isinstance(names, list):
            raise DataError(f"{path}: not a JSON list of class names")
        return [str(n) for n in names]
    return None


@dataclass
class Prediction:
    index: int
    label: str | None
    probability: float


class SearchService:
    """A model for inference plus, optionally, the index of an image folder or a caption file."""

    def __init__(self, model: InferenceModel, index: ImageIndex | None = None, labels: list[str] | None = None):
        import torch

        from ..model.family import has_task_head

        self.model = model
        self.index = index
        self.labels = labels
        net = model.model
        self.has_itm = has_task_head(net, "itm")
        self.class_head = "vqa" if has_task_head(net, "vqa") else ("classify" if has_task_head(net, "classify")
                                                                   else None)
        from ..data.transforms import build_transform

        self.transform = build_transform(model.image_size, False)
        self._no_grad = torch.no_grad
        self._thumbnail = lru_cache(maxsize=1024)(self._make_thumbnail)

    @classmethod
    def open(cls, model: str | Path, *, index: str | Path | None = None, captions: str | Path | None = None,
             cache_dir: str | Path | None = None, ann: str | None = None, device: str | None = None,
             labels: str | Path | None = None, batch_size: int = 64) -> tuple[SearchService, object | None]:
        """Load the model, bring the index up to date; returns the service and the update statistics (or ``None``)."""
        from ..factory import load_inference_model
        from ..inference.collection_index import update_caption_index, update_index

        if index is not None and captions is not None:
            raise VlmoError("serve either a folder of images (--index FOLDER) or a caption file (--captions FILE)")
        loaded = load_inference_model(model, device=device)
        loaded.require_tokenizer()
        stats = built = None
        if index is not None:
            built, stats = update_index(loaded, index, cache_dir=cache_dir, batch_size=batch_size, ann=ann)
        elif captions is not None:
            built, stats = update_caption_index(loaded, captions, cache_dir=cache_dir, ann=ann)
        return cls(loaded, built, load_labels(loaded.path, labels)), stats

    # ---------------------------------------------------------------------------------------- batched functions
    def pixels(self, image: Image.Image) -> torch.Tensor:
        """The eval-transformed ``[3, H, W]`` tensor of an image."""
        return self.transform(image)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        from ..inference.embed import encode_texts

        return encode_texts(self.model, list(texts))

    def embed_images(self, pixels: Sequence[torch.Tensor]) -> torch.Tensor:
        import torch

        from ..model.family import image_embeddings

        with self._no_grad():
            batch = torch.stack(list(pixels)).to(self.model.device)
            return image_embeddings(self.model.model, batch).float().cpu()

    def score(self, pairs: Sequence[tuple[str, torch.Tensor]]) -> list[dict[str, float | None]]:
        """ITC cosine similarity and ITM match probability (``None`` without an ITM head) of (text, image) pairs."""
        import torch

        from ..inference.search import pair_logits

        texts, pixels = [t for t, _ in pairs], torch.stack([p for _, p in pairs])
        similarity = (self.embed_texts(texts) * self.embed_images(list(pixels))).sum(1).tolist()
        probability: list[float | None] = [None] * len(pairs)
        if self.has_itm:
            probability = torch.softmax(pair_logits(self.model, texts, pixels), dim=1)[:, 1].tolist()
        return [{"similarity": s, "itm_probability": p} for s, p in zip(similarity, probability)]

    def classify(self, pairs: Sequence[tuple[str, torch.Tensor]], top: int = 5) -> list[list[Prediction]]:
        """The ``top`` classes (VQA answers or class names) of each (text, image) pair, most probable first."""
        import torch

        from ..inference.search import pair_logits

        if self.class_head is None:
            raise VlmoError("this model has no VQA or classification head (heads: "
                            + ", ".join(self.model.model.config.heads) + ")")
        texts, pixels = [t for t, _ in pairs], torch.stack([p for _, p in pairs])
        probs = torch.softmax(pair_logits(self.model, texts, pixels, head=self.class_head), dim=1)
        values, rows = probs.topk(min(top, probs.shape[1]), dim=1)
        out = []
        for vals, idx in zip(values.tolist(), rows.tolist()):
            out.append([Prediction(i, self._label(i), v) for i, v in zip(idx, vals)])
        return out

    def _label(self, i: int) -> str | None:
        return self.labels[i] if self.labels is not None and i < len(self.labels) else None

    # ---------------------------------------------------------------------------------------- search
    def require_index(self) -> ImageIndex:
        if self.index is None:
            raise VlmoError("the server was started without --index FOLDER or --captions FILE: nothing to search")
        return self.index

    def nearest(self, queries: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
        from ..inference.search import nearest

        return nearest(self.require_index(), queries, k, self.model.device)

    def hits(self, found, *, top_k: int, rerank_k: int, text: str | None, pixels) -> list:
        from ..factory import ITM_HOW
        from ..inference.search import check_query, rank_hits

        index = self.require_index()
        check_query(text, None if text is not None else "image", top_k, rerank_k, index.kind)
        if rerank_k:
            self.model.require_head("itm", ITM_HOW)
        return rank_hits(self.model, index, found, top_k=top_k, rerank_k=rerank_k, text=text, pixels=pixels)

    # ---------------------------------------------------------------------------------------- thumbnails
    def thumbnail(self, row: int) -> bytes:
        """A JPEG thumbnail of indexed image ``row`` (only rows of the image index exist)."""
        index = self.index
        if index is None or index.kind != "image" or not 0 <= row < len(index):
            raise KeyError(row)
        return self._thumbnail(row)

    def _make_thumbnail(self, row: int) -> bytes:
        from PIL import Image

        with Image.open(self.index.path_of(row)) as img:  # type: ignore[union-attr]
            img = img.convert("RGB")
            img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buffer = io.BytesIO()
            img.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()
