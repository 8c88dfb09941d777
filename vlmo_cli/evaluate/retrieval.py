"""Image-text retrieval with a model: encode a split once (dual encoder), rank in fp32 chunks, optionally re-rank
the top K with the fusion encoder's ITM head (metrics in :mod:`vlmo_cli.evaluate.retrieval_metrics`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..data.collate import trim_text_padding
from ..errors import VlmoError
from .retrieval_metrics import RetrievalResult, evaluate_retrieval, rerank_retrieval


@dataclass
class EncodedSplit:
    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    text_to_image: torch.Tensor
    image_names: list[str]
    seconds: float


@torch.no_grad()
def encode_split(model, data, device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None) -> EncodedSplit:
    """Embeddings of every image and caption of a :class:`~vlmo_cli.data.loader.RetrievalEval`."""
    model.eval()
    device = torch.device(device)
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else torch.autocast(device.type, enabled=False)
    t0 = time.perf_counter()
    images, texts = [], []
    with ctx:
        for batch in data.images:
            images.append(model.encode_image(batch["pixel_values"].to(device)).float())
        for batch in data.texts:  # shortest first: each batch runs at its own longest caption
            batch = trim_text_padding(batch)
            texts.append(model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float())
    encoded = torch.cat(texts)
    text_embeds = torch.empty_like(encoded)
    text_embeds[data.text_order.to(encoded.device)] = encoded  # back to caption order
    if device.type == "cuda":
        torch.cuda.synchronize()
    return EncodedSplit(torch.cat(images), text_embeds, data.text_to_image, data.image_names, time.perf_counter() - t0)


@dataclass
class RetrievalReport:
    result: RetrievalResult
    encoded: EncodedSplit
    timings: dict[str, float] = field(default_factory=dict)
    reranked: RetrievalResult | None = None

    @property
    def metrics(self) -> dict[str, float]:
        return self.result.metrics


def itm_pair_scorer(model, data, device, batch_size: int = 64):
    """``score(image_idx, text_idx) -> ITM match logit`` reading images and captions back from the split."""
    images_ds, texts_ds = data.images.dataset, data.texts.dataset
    collate_text = data.texts.collate_fn

    @torch.no_grad()
    def score(image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
        unique = {int(i): None for i in image_idx.tolist()}
        for i in unique:
            item = images_ds[i]
            if item is None:
                raise VlmoError(f"image row {i} of the split cannot be read for re-ranking")
            unique[i] = item["pixel_values"]
        pixels = torch.stack([unique[int(i)] for i in image_idx.tolist()]).to(device)
        text = trim_text_padding(collate_text([texts_ds[int(t)] for t in text_idx.tolist()]))
        out = model.forward_pair(text["input_ids"].to(device), text["attention_mask"].to(device), pixels)
        return model.itm_logits(out.pooled).float()[:, 1].cpu()  # official rerank adds ITM logit[1] to the ITC score

    return score


def retrieval_recall(
    model,
    path,
    split: str,
    *,
    tokenizer=None,
    image_size: int | None = None,
    max_text_len: int = 40,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    rerank_k: int = 0,
    chunk_size: int = 1024,
    keep_top: int = 0,
    workers: int = 0,
) -> RetrievalReport:
    """Encode ``split`` of a prepared pairs directory and compute TR/IR R@1/5/10 (and re-ranked ones with ``rerank_k``)."""
    from ..data.loader import build_retrieval_eval

    data = build_retrieval_eval(path, split, tokenizer=tokenizer, image_size=image_size or model.config.image_size,
                                batch_size=batch_size, workers=workers, max_text_len=max_text_len)
    encoded = encode_split(model, data, device)
    t0 = time.perf_counter()
    result = evaluate_retrieval(encoded.image_embeds.to(device), encoded.text_embeds.to(device), encoded.text_to_image,
                                keep_top=max(rerank_k, keep_top), chunk_size=chunk_size)
    report = RetrievalReport(result, encoded, {"encode_s": encoded.seconds, "rank_s": time.perf_counter() - t0})
    if rerank_k:
        if getattr(model, "itm_score", None) is None:
            raise VlmoError("--rerank-k needs a model with an ITM head (fine-tune retrieval with with_itm = true, "
                            "or use a stage-3 pre-trained model)")
        t0 = time.perf_counter()
        report.reranked = rerank_retrieval(result, itm_pair_scorer(model, data, device), rerank_k, combine="add")
        report.timings["rerank_s"] = time.perf_counter() - t0
    return report
