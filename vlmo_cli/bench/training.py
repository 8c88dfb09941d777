"""Throughput benchmarks on synthetic batches: ``vlmo bench --stage TRAINING-STAGE``.

A training benchmark builds the model of a recipe stage, feeds it random batches of the recipe's shapes (image size,
text length, vocabulary), runs ``warmup`` untimed steps (they absorb ``torch.compile`` and cuDNN autotuning) and then
``steps`` timed ones. Every step is split into four phases, each closed by a device synchronisation on GPU so the
time lands where the work is done:

* ``data``: create the synthetic batch on the host and move it to the device (a lower bound of real loading);
* ``forward``: the stage objective under autocast;
* ``backward``: ``loss.backward()`` (with the loss scaler in fp16);
* ``optimizer``: AdamW step and ``zero_grad``.

``samples_per_s`` counts forward + backward + optimizer (in training, loading overlaps with compute);
``extra["samples_per_s_with_data"]`` includes the data phase.

Model FLOPs utilisation counts the analytic model FLOPs (``3 ×`` the forward FLOPs of the stage's passes, see
:mod:`vlmo_cli.model.flops`; recomputation under activation checkpointing is not counted, by convention) against the
dense peak of the device for the chosen precision.

The model, step module and optimizer come from :func:`vlmo_cli.train.build.build_stage`, the builder the training
loop uses (with the answer and class counts of the recipe's prepared data when it is there).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import ConfigError
from .common import (CLS_ID, MASK_ID, SEP_ID, BenchResult, BenchSettings, default_batch, default_peak_tflops,
                     device_name, peak_memory_mb, resolve_settings, summarise, sync_device, synthetic_text)


def _mlm(ids: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, rate: float = 0.15):
    """``[MASK]`` on ~``rate`` of the words (at least one per row), labels −100 elsewhere."""
    words = mask.bool() & (ids != CLS_ID) & (ids != SEP_ID)
    chosen = words & (torch.rand(ids.shape, generator=gen) < rate)
    first_word = torch.zeros_like(chosen)
    first_word[:, 1] = True
    chosen |= first_word & ~chosen.any(1, keepdim=True)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return torch.where(chosen, torch.full_like(ids, MASK_ID), ids), labels


def _patch_mask(batch: int, patches: int, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """``[batch, patches]``: ``ratio`` of each row's patches masked (at least one), at random positions."""
    scores = torch.rand(batch, patches, generator=gen)
    return scores <= scores.kthvalue(max(1, int(ratio * patches)), dim=1, keepdim=True).values


def synthetic_batch(data_task: str, cfg, batch: int, text_len: int, image_size: int, gen: torch.Generator,
                    text_tokens: tuple[int, int] | None = None, task=None) -> dict:
    """A random batch with the keys and shapes the collator of ``data_task`` produces (see :mod:`vlmo_cli.data.collate`);
    ``text_tokens`` = range of the real text lengths (see :class:`BenchSettings`); ``task`` = the stage's recipe
    settings (needed by ``mixed``, whose parts and mask rates they give)."""
    if data_task == "mixed":
        return _mixed_batch(cfg, batch, text_len, image_size, gen, text_tokens, task)
    out: dict[str, torch.Tensor] = {}
    if data_task != "text":
        out["pixel_values"] = torch.randn(batch, 3, image_size, image_size, generator=gen)
    if data_task == "images":
        out["patch_mask"] = _patch_mask(batch, (image_size // cfg.patch_size) ** 2, 0.4, gen)
        return out
    ids, mask = synthetic_text(batch, text_len, cfg.vocab_size, gen, text_tokens)
    out["input_ids"], out["attention_mask"] = ids, mask
    if data_task in ("text", "pairs"):
        out["mlm_input_ids"], out["mlm_labels"] = _mlm(ids, mask, gen)
    if data_task == "pairs":
        out["image_ids"] = torch.arange(batch)
    elif data_task == "vqa":
        targets = torch.zeros(batch, cfg.vqa_num_answers)
        targets[torch.arange(batch), torch.randint(0, cfg.vqa_num_answers, (batch,), generator=gen)] = 1.0
        out["vqa_targets"] = targets
    elif data_task == "nlvr2":
        out["pixel_values_1"] = torch.randn(batch, 3, image_size, image_size, generator=gen)
        out["labels"] = torch.randint(0, 2, (batch,), generator=gen)
    elif data_task == "classify":
        out["labels"] = torch.randint(0, cfg.num_classes, (batch,), generator=gen)
    return out


def _mixed_batch(cfg, batch: int, text_len: int, image_size: int, gen: torch.Generator,
                 text_tokens: tuple[int, int] | None, task) -> dict:
    """A masked-data-modelling batch (:mod:`vlmo_cli.data.mixed`): the task's fractions of ``batch`` rows as
    images, texts and pairs, each part's keys prefixed with its name, masked at the task's rates."""
    from ..data.mixed import batch_sizes

    patches = (image_size // cfg.patch_size) ** 2
    out: dict[str, torch.Tensor] = {}
    for part, rows in batch_sizes(task.fractions, batch).items():
        one: dict[str, torch.Tensor] = {}
        if part in ("image", "pair"):
            one["pixel_values"] = torch.randn(rows, 3, image_size, image_size, generator=gen)
            one["image_ids"] = torch.arange(rows)
        if part == "pair":
            one["group_ids"] = torch.arange(rows)
        if part == "image":
            one["patch_mask"] = _patch_mask(rows, patches, task.image_mask_ratio, gen)
        else:
            ids, mask = synthetic_text(rows, text_len, cfg.vocab_size, gen, text_tokens)
            rate = task.text_mask_ratio if part == "text" else task.pair_text_mask_ratio
            one["input_ids"], one["attention_mask"] = ids, mask
            one["mlm_input_ids"], one["mlm_labels"] = _mlm(ids, mask, gen, rate)
        if part == "pair" and task.pair_image_mask_ratio > 0:
            one["patch_mask"] = _patch_mask(rows, patches, task.pair_image_mask_ratio, gen)
        out.update({f"{part}.{k}": v for k, v in one.items()})
    return out


# ---------------------------------------------------------------------- FLOPs
def train_flops_per_sample(section: str, cfg, task, text_len: int | float) -> float:
    """Model FLOPs of one training sample of ``section`` (its :class:`~vlmo_cli.train.stages.StageDef` counts them)."""
    from ..model.beit3_config import Beit3Config
    from ..train.beit3_stages import BEIT3_STAGE_DEFS
    from ..train.stages import STAGE_DEFS

    defs = BEIT3_STAGE_DEFS if isinstance(cfg, Beit3Config) else STAGE_DEFS
    return defs[section].flops_per_sample(cfg, task, text_len)


# ---------------------------------------------------------------------- the training benchmark
def open_prepared_if_there(stage):
    """The stage's prepared dataset when it is there (its answer and class counts then size the heads, as in
    training), else ``None``: the benchmark runs on synthetic batches and needs no data."""
    from ..data.store import MANIFEST, open_prepared

    first = Path(stage.task.dataset[0])
    return open_prepared(first) if (first / MANIFEST).is_file() else None


def step_module_factory(implementation: str, compiled: bool):
    """The step module of ``implementation``: ``optimised`` (``+untrimmed``) is the training loop's
    :class:`~vlmo_cli.train.build.StageModule`, ``reference`` (``+sdpa``, ``+batched``) the stage-3 oracle."""
    from ..train.build import StageModule

    kind, *flags = implementation.split("+")
    if kind == "optimised" and set(flags) <= {"untrimmed"}:
        return lambda model, stage_def, task, buckets: StageModule(
            model, stage_def, task, trim_padding="untrimmed" not in flags, length_buckets=buckets)
    if kind == "reference" and set(flags) <= {"sdpa", "batched"}:
        from .reference_step import ReferenceStageModule

        return lambda model, stage_def, task, buckets: ReferenceStageModule(
            model, stage_def, task, sdpa="sdpa" in flags, batched_itm="batched" in flags)
    raise ConfigError(f"implementation must be 'optimised' (optionally '+untrimmed') or 'reference' (optionally "
                      f"'+sdpa', '+batched' ablations), got {implementation!r}")


def build_training(settings: BenchSettings, section: str, stage, device: torch.device, share=None):
    """The :class:`~vlmo_cli.train.build.StageParts` of a stage, built by the training loop's builder (random
    weights). ``share``: a :class:`TrainingStepper` of the same stage whose model (and optimizer, when the fused
    switch agrees) are reused, so that several configurations of a big model fit in memory side by side."""
    from ..train.build import build_stage

    make_module = step_module_factory(settings.implementation, settings.compile or stage.train.compile)
    if share is not None and (share.section != section or share.device != device):
        raise ConfigError("a shared benchmark model must come from the same stage and device")
    if share is None:
        torch.manual_seed(settings.seed)
    return build_stage(stage, device, lambda: open_prepared_if_there(stage), fused_adamw=settings.fused_adamw,
                       compile=settings.compile or stage.train.compile, make_module=make_module,
                       reuse=share.parts if share is not None else None)


class TrainingStepper:
    """One benchmarked training step at a time, each split into data / forward / backward / optimizer seconds.

    Kept separate from :func:`bench_training` so that a script can interleave the steps of several configurations
    in one process (``benchmarks/bench_train.py`` measures ratios that way).
    """

    def __init__(self, settings: BenchSettings, share: "TrainingStepper | None" = None) -> None:
        self.settings = settings
        self.section, self.stage, self.device = resolve_settings(settings)
        if self.section.startswith("eval."):
            raise ConfigError("eval-retrieval is not a training stage: use bench_eval_retrieval")
        self.batch = default_batch(settings, self.stage.data.batch_size, self.device)
        self.precision = settings.precision or self.stage.train.precision
        self.parts = build_training(settings, self.section, self.stage, self.device, share)
        self.cfg, self.stage_def, self.model = self.parts.cfg, self.parts.stage_def, self.parts.model
        self.module, self.optimizer, self.fused = self.parts.module, self.parts.optimizer, self.parts.fused
        self.checkpointing = settings.checkpointing or self.stage.train.activation_checkpointing
        self.gen = torch.Generator().manual_seed(settings.seed)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.text_lengths: list[int] = []

    def step(self) -> dict[str, float]:
        from ..train.padding import trimmed_length

        dev, s = self.device, self.stage
        t0 = time.perf_counter()
        batch = synthetic_batch(self.stage_def.data_task, self.cfg, self.batch, s.data.max_text_len,
                                s.data.image_size, self.gen, self.settings.text_tokens, task=s.task)
        pin = dev.type == "cuda"
        batch = {k: (v.pin_memory() if pin else v).to(dev, non_blocking=True) for k, v in batch.items()}
        # the text length the model runs at (for the FLOPs): trimmed of shared padding unless the step keeps it
        trims = getattr(self.module, "trim_padding", False)
        extent = trimmed_length(batch, self.module.length_buckets) if trims else None
        self.text_lengths.append(extent if extent is not None else s.data.max_text_len)
        sync_device(dev)
        t1 = time.perf_counter()
        self.module.train()
        self.model.set_grad_checkpointing(self.checkpointing)  # per step: a shared model serves several settings
        with self.autocast():
            loss, _ = self.module(batch)
        sync_device(dev)
        t2 = time.perf_counter()
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        sync_device(dev)
        t3 = time.perf_counter()
        if s.train.grad_clip > 0:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, s.train.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync_device(dev)
        t4 = time.perf_counter()
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"non-finite loss {float(loss)} in the benchmark of {self.section}")
        return {"data": t1 - t0, "forward": t2 - t1, "backward": t3 - t2, "optimizer": t4 - t3, "compute": t4 - t1,
                "step": t4 - t0}


def bench_training(settings: BenchSettings) -> BenchResult:
    """Benchmark one training stage (see the module docstring)."""
    stepper = TrainingStepper(settings)
    dev = stepper.device
    t0 = time.perf_counter()
    for _ in range(settings.warmup):
        stepper.step()
    warmup_s = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    timed = [stepper.step() for _ in range(settings.steps)]
    times = summarise(timed)
    # throughput of the compute (forward + backward + optimizer): in training, data loading overlaps with it
    # (loader workers, pinned memory); the data phase is reported on its own and in samples_per_s_with_data
    total = sum(t["step"] for t in timed)
    samples_per_s = stepper.batch * len(timed) / sum(t["compute"] for t in timed)
    text_len = statistics.mean(stepper.text_lengths[-len(timed):])  # the length the timed steps ran at
    flops = train_flops_per_sample(stepper.section, stepper.cfg, stepper.stage.task, text_len)
    peak = settings.peak_tflops if settings.peak_tflops is not None else default_peak_tflops(dev, stepper.precision)
    achieved = flops * samples_per_s / 1e12
    memory, kind = peak_memory_mb(dev)
    cfg = stepper.cfg
    return BenchResult(
        recipe=settings.recipe, stage=settings.stage, section=stepper.section, device=device_name(dev),
        precision=stepper.precision, batch=stepper.batch,
        settings={**asdict(settings), "fused_adamw": stepper.fused, "overrides": list(settings.overrides)},
        model={"size": cfg.name, "image_size": cfg.image_size, "text_len": stepper.stage.data.max_text_len,
               "depth": cfg.depth, "embed_dim": cfg.embed_dim, "vocab_size": cfg.vocab_size,
               "parameters": sum(p.numel() for p in stepper.module.parameters()),
               "trainable": sum(p.numel() for p in stepper.params)},
        times={**times, "warmup_total_s": warmup_s, "timed_total_s": total},
        samples_per_s=samples_per_s, flops_per_sample=flops, achieved_tflops=achieved, peak_tflops=peak,
        mfu=achieved / peak if peak else None, peak_memory_mb=memory, memory_kind=kind,
        extra={"samples_per_s_with_data": stepper.batch * len(timed) / total, "text_len_run": text_len},
    )
