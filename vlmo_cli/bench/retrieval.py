"""``vlmo bench RECIPE --stage eval-retrieval``: encoding, ranking and ITM re-ranking time of a retrieval evaluation
on synthetic data (``N`` images × ``captions_per_image·N`` captions); the shared machinery is in :mod:`vlmo_cli.bench.common`."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from typing import Any

import torch

from ..data.collate import trim_text_padding
from ..errors import ConfigError
from .common import BenchResult, BenchSettings, device_name, peak_memory_mb, resolve_settings, sync_device, synthetic_text


def bench_eval_retrieval(settings: BenchSettings) -> BenchResult:
    """Encode ``N`` synthetic images and ``captions_per_image·N`` captions, rank them, re-rank the top ``k``."""
    from ..evaluate.retrieval_metrics import TopK, evaluate_retrieval, rerank_topk
    from ..model.vlmo import VLMo

    section, stage, dev = resolve_settings(settings)
    if section != "eval.retrieval":
        raise ConfigError(f"bench_eval_retrieval needs --stage eval-retrieval, not {settings.stage}")
    n, cpi = settings.num_images, settings.captions_per_image
    if n < 1 or cpi < 1:
        raise ConfigError(f"--num-images and --captions-per-image must be >= 1 (got {n}, {cpi})")
    precision = settings.precision or "no"
    batch = settings.batch or stage.data.batch_size
    text_len, size = stage.data.max_text_len, stage.data.image_size
    heads = ["pooler", "itc"] + (["itm"] if settings.rerank_k else [])
    cfg = stage.model.build_config(image_size=size, max_text_len=text_len, heads=heads)
    torch.manual_seed(settings.seed)
    model = VLMo(cfg).to(dev).eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(dev.type, dtype=dtype)) if dtype else contextlib.nullcontext
    gen = torch.Generator().manual_seed(settings.seed)
    # a pool of distinct inputs cycled over the N rows: the cost per row is the same, the memory stays bounded
    pool = min(n, 256)
    pixels = torch.randn(pool, 3, size, size, generator=gen).to(dev)
    ids, mask = synthetic_text(pool * cpi, text_len, cfg.vocab_size, gen, settings.text_tokens)
    trim = "untrimmed" not in settings.implementation
    if trim:  # as the evaluation: shortest first, each batch cut to its longest caption
        by_length = torch.argsort(mask.sum(1), stable=True)
        ids, mask = ids[by_length], mask[by_length]
    ids, mask = ids.to(dev), mask.to(dev)

    def texts(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = {"input_ids": ids[rows], "attention_mask": mask[rows]}
        chunk = trim_text_padding(chunk) if trim else chunk
        return chunk["input_ids"], chunk["attention_mask"]
    n_text = n * cpi

    def rows(total: int, pool_size: int, start: int, stop: int) -> torch.Tensor:
        return torch.arange(start, min(stop, total), device=dev) % pool_size

    with torch.no_grad(), autocast():
        for _ in range(max(1, settings.warmup)):  # warm-up: kernels, allocator
            model.encode_image(pixels[:batch])
            model.encode_text(ids[:batch], mask[:batch])
        sync_device(dev)
        t0 = time.perf_counter()
        img = torch.cat([model.encode_image(pixels[rows(n, pool, i, i + batch)]).float() for i in range(0, n, batch)])
        sync_device(dev)
        t1 = time.perf_counter()
        txt = []
        for i in range(0, n_text, batch):
            txt.append(model.encode_text(*texts(rows(n_text, pool * cpi, i, i + batch))).float())
        txt = torch.cat(txt)
        sync_device(dev)
        t2 = time.perf_counter()
    text_to_image = torch.arange(n_text) // cpi
    result = evaluate_retrieval(img, txt, text_to_image, keep_top=settings.rerank_k)
    sync_device(dev)
    t3 = time.perf_counter()
    times = {"encode_images_s": t1 - t0, "encode_texts_s": t2 - t1, "encode_s": t2 - t0, "rank_s": t3 - t2}
    extra: dict[str, Any] = {"num_images": n, "num_texts": n_text, "rank_fraction_of_encode": (t3 - t2) / (t2 - t0)}
    if settings.rerank_k:
        k = settings.rerank_k

        @torch.no_grad()
        def score(image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
            i = image_idx.to(dev) % pool
            t = text_idx.to(dev) % (pool * cpi)
            with autocast():
                out = model.forward_pair(*texts(t), pixels[i])
                return model.itm_logits(out.pooled).float()[:, 1]

        q = settings.rerank_queries if 0 < settings.rerank_queries < n else n
        i2t = TopK(result.i2t.indices[:q], result.i2t.scores[:q])
        t2i = TopK(result.t2i.indices[: q * cpi], result.t2i.scores[: q * cpi])
        sync_device(dev)
        t4 = time.perf_counter()
        rerank_topk(i2t, k, score_fn=score, batch_size=batch)
        rerank_topk(t2i, k, score_fn=lambda a, b: score(b, a), batch_size=batch)
        sync_device(dev)
        measured = time.perf_counter() - t4
        pairs = (q + q * cpi) * min(k, result.i2t.k)
        full_pairs = (n + n_text) * min(k, result.i2t.k)
        times["rerank_measured_s"] = measured
        times["rerank_s"] = measured * full_pairs / pairs
        extra.update(rerank_k=k, rerank_queries=q, rerank_pairs_measured=pairs, rerank_pairs_full=full_pairs,
                     rerank_extrapolated=q < n, rerank_pairs_per_s=pairs / measured)
    memory, kind = peak_memory_mb(dev)
    return BenchResult(
        recipe=settings.recipe, stage=settings.stage, section=section, device=device_name(dev), precision=precision,
        batch=batch, settings={**asdict(settings), "overrides": list(settings.overrides)},
        model={"size": cfg.name, "image_size": size, "text_len": text_len, "depth": cfg.depth,
               "embed_dim": cfg.embed_dim},
        times=times, samples_per_s=(n + n_text) / (t2 - t0), peak_memory_mb=memory, memory_kind=kind, extra=extra,
    )


