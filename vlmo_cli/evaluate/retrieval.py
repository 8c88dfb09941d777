"""Image-text retrieval with a model: encode a split once (dual encoder), rank in fp32 chunks, optionally re-rank
the top K with the fusion encoder's ITM head (metrics in :mod:`vlmo_cli.evaluate.retrieval_metrics`), and the
runner behind ``vlmo eval retrieval`` (:func:`run_retrieval`: report, optional grid of examples)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.collate import trim_text_padding
from ..errors import DataError, VlmoError
from ..factory import ITM_HOW, InferenceModel
from ..model.family import image_embeddings, pair_logits, text_embeddings
from .report import check_report_outputs, sibling_path, write_report
from .retrieval_metrics import RetrievalResult, evaluate_retrieval, rerank_retrieval
from .target import EvalTarget, check_split, default_report_path, load_for, report_header, text_length


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
            images.append(image_embeddings(model, batch["pixel_values"].to(device)).float())
        for batch in data.texts:  # shortest first: each batch runs at its own longest caption
            batch = trim_text_padding(batch)
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            texts.append(text_embeddings(model, ids, mask).float())
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
        logits = pair_logits(model, "itm", text["input_ids"].to(device), text["attention_mask"].to(device), pixels)
        return logits.float()[:, 1].cpu()  # official rerank adds ITM logit[1] to the ITC score

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


# ---------------------------------------------------------------------------------------------------- the runner
def run_retrieval(
    model: InferenceModel | str | Path,
    target: EvalTarget,
    *,
    rerank_k: int | None = None,
    chunk_size: int | None = None,
    examples: int = 0,
    examples_k: int = 5,
    out: str | Path | None = None,
    device: str | None = None,
    tokenizer=None,
    overwrite: bool = False,
) -> tuple[dict[str, Any], Path]:
    """Image-text retrieval recall of a dual encoder on ``target`` (and ITM re-ranked recall with ``rerank_k``).

    Args:
        rerank_k / chunk_size: default to the recipe's ``[eval.retrieval]`` values.
        examples: draw the top ``examples_k`` images of this many caption queries into ``<report>-examples.png``.
    """
    from ..data.store import open_prepared
    from .retrieval_metrics import PROTOCOL, TIE_RULE, pool_warnings

    task = target.task
    rerank_k = int(getattr(task, "rerank_k", 0) if rerank_k is None else rerank_k)
    chunk_size = int(getattr(task, "chunk_size", 1024) if chunk_size is None else chunk_size)
    if rerank_k < 0 or examples < 0:
        raise DataError("--rerank-k and --examples must be >= 0")
    prepared = open_prepared(target.dataset, "pairs")
    check_split(prepared, target.split)
    loaded = load_for(model, target, device, tokenizer)
    if rerank_k:
        loaded.require_head("itm", ITM_HOW)
    report_path = Path(out) if out else default_report_path(loaded.path, "retrieval")
    check_report_outputs(report_path, ["-examples.png"] if examples else [], overwrite=overwrite,
                         inputs=[target.dataset, loaded.path])
    result = retrieval_recall(
        loaded.model, target.dataset, target.split, tokenizer=loaded.tokenizer, image_size=loaded.image_size,
        max_text_len=text_length(loaded, target), batch_size=target.batch_size, device=loaded.device,
        rerank_k=rerank_k, chunk_size=chunk_size, keep_top=examples_k if examples else 0,
    )
    first = result.result
    scorer = "dual encoder: cosine similarity of the ITC embeddings (image-only and text-only passes)"
    report = report_header("retrieval", loaded, target)
    report.update(
        protocol=PROTOCOL, tie_rule=TIE_RULE, num_images=first.num_images, num_texts=first.num_texts,
        pool={"images": first.num_images, "texts": first.num_texts},
        warnings=pool_warnings(first.num_images, first.num_texts, first.ks),
        scorer=scorer, rerank_k=rerank_k, max_text_len=text_length(loaded, target), batch_size=target.batch_size,
        chunk_size=chunk_size, metrics=first.metrics,
        metrics_reranked=result.reranked.metrics if result.reranked is not None else None,
        timings_s={"encode": result.timings.get("encode_s"), "rank": result.timings.get("rank_s"),
                   "rerank": result.timings.get("rerank_s")},
    )
    if rerank_k:
        report["rerank_scorer"] = (f"fusion encoder ITM head on each query's top {rerank_k}: "
                                   "ITM match logit + ITC similarity (VLMo/LAVIS re-ranking); later ranks unchanged")
    if examples:
        final = result.reranked or first
        report["examples"] = str(save_examples(prepared, target.split, final, examples, examples_k,
                                               sibling_path(report_path, "-examples.png")))
    write_report(report, report_path)
    return report, report_path


def save_examples(prepared, split: str, result, num_queries: int, k: int, path: Path) -> Path:
    """A PNG grid of the top ``k`` images for ``num_queries`` caption queries spread evenly over the split, with each
    query's ground-truth image in a last column when the top ``k`` missed it."""
    from .examples_grid import save_retrieval_grid

    rows = prepared.split(split)
    captions = [c for caps in rows.select_columns(["captions"])["captions"] for c in caps]
    n = min(num_queries, len(captions))
    picks = sorted({round(i * (len(captions) - 1) / max(n - 1, 1)) for i in range(n)})
    k = min(k, result.t2i.k)
    images = rows.select_columns(["image"])
    truth = result.text_to_image
    results, scores, hits, truths = [], [], [], []
    for t in picks:
        found = result.t2i.indices[t, :k].tolist()
        results.append([images[int(j)]["image"]["bytes"] for j in found])
        scores.append(result.t2i.scores[t, :k].tolist())
        hits.append([j == int(truth[t]) for j in found])
        truths.append(None if any(hits[-1]) else images[int(truth[t])]["image"]["bytes"])
    return save_retrieval_grid([captions[t] for t in picks], results, scores, path, hits=hits,
                               query_labels=[f"caption {t}" for t in picks], truths=truths)
