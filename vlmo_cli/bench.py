"""Throughput benchmarks on synthetic batches: ``vlmo bench`` (the library behind the command).

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

``eval-retrieval`` times the retrieval evaluation of ``N`` images × ``captions_per_image·N`` captions: dual-encoder
encoding, ranking (:func:`~vlmo_cli.evaluate.retrieval_metrics.evaluate_retrieval`, fp32 blocks on the device) and
ITM re-ranking of the top ``k`` (measured on a subset of the queries and extrapolated when asked to).
"""

from __future__ import annotations

import contextlib
import math
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch

from .errors import ConfigError

#: ``vlmo bench --stage`` value → recipe section
STAGE_SECTIONS = {
    "vision": "pretrain.vision",
    "text": "pretrain.text",
    "vl": "pretrain.vl",
    "vqa": "finetune.vqa",
    "nlvr2": "finetune.nlvr2",
    "retrieval": "finetune.retrieval_coco",
    "classify": "finetune.classify",
    "eval-retrieval": "eval.retrieval",
}

#: dense (no sparsity) peak TFLOP/s per device family: (bf16/fp16 tensor cores, fp32 without TF32, TF32)
PEAK_TFLOPS: tuple[tuple[str, float, float, float], ...] = (
    ("H200", 989.0, 67.0, 494.0),
    ("H100 PCIe", 756.0, 51.0, 378.0),
    ("H100", 989.0, 67.0, 494.0),
    ("H800", 989.0, 67.0, 494.0),
    ("GH200", 989.0, 67.0, 494.0),
    ("B200", 2250.0, 80.0, 1100.0),
    ("A100", 312.0, 19.5, 156.0),
    ("A800", 312.0, 19.5, 156.0),
    ("L40S", 362.0, 91.6, 183.0),
    ("L4", 121.0, 30.3, 60.0),
    ("A10G", 70.0, 31.2, 35.0),
    ("A10", 125.0, 31.2, 62.5),
    ("RTX 4090", 165.0, 82.6, 82.6),
    ("RTX 3090", 71.0, 35.6, 35.6),
    ("V100", 125.0, 15.7, 15.7),
    ("T4", 65.0, 8.1, 8.1),
)

# synthetic token ids: 0 = [PAD] (the model's pad id), then [UNK] [CLS] [SEP] [MASK] as in the shipped tokenizer
_CLS, _SEP, _MASK, _FIRST_WORD = 2, 3, 4, 5


def default_peak_tflops(device: torch.device, precision: str) -> float | None:
    """Dense peak of ``device`` for ``precision`` (``None`` on CPU or an unknown GPU: MFU is then omitted)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for family, half, fp32, tf32 in PEAK_TFLOPS:
        if family in name:
            if precision in ("bf16", "fp16"):
                return half
            return tf32 if torch.backends.cuda.matmul.allow_tf32 else fp32
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """CUDA max allocated since the last reset, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss / 2**20 if sys.platform == "darwin" else rss / 2**10), "process peak RSS"


# ---------------------------------------------------------------------- settings and results
@dataclass
class BenchSettings:
    """What to benchmark.

    Attributes:
        recipe: a recipe file or shipped name.
        stage: a key of :data:`STAGE_SECTIONS`.
        batch: samples per step; 0 = the recipe's batch capped at 32 on GPU and 8 on CPU.
        precision: ``no``, ``bf16``, ``fp16``; ``None`` = the recipe's ``train.precision``.
        compile: ``torch.compile`` the step (recipe ``train.compile``).
        checkpointing: activation checkpointing per block.
        fused_adamw: fused AdamW kernel; ``None`` = the recipe's switch (``auto`` = on GPU).
        steps / warmup: timed and untimed steps.
        peak_tflops: peak for MFU; ``None`` = by device (no MFU on CPU).
        device: ``cuda``/``cpu``/…; ``None`` = CUDA when available.
        overrides: recipe overrides ``key.path=value``.
        implementation: ``optimised`` (the training code; ``optimised+untrimmed`` keeps the text padding) or
            ``reference`` (the straightforward stage-3 oracle; ``reference+sdpa``, ``reference+batched``,
            ``reference+sdpa+batched`` switch single optimisations on).
        text_tokens: ``(min, max)`` real text lengths (with ``[CLS]``/``[SEP]``) of the synthetic rows, each drawn
            uniformly; ``None`` = ``[max_text_len/2, max_text_len]``. Rows are padded to ``max_text_len`` either way.
        seed: RNG seed of the model and the batches.
        num_images / captions_per_image / rerank_k / rerank_queries: ``eval-retrieval`` sizes; ``rerank_queries``
            image queries (and ``captions_per_image`` times as many caption queries) are re-ranked and the time is
            extrapolated to all queries; 0 = re-rank every query.
    """

    recipe: str
    stage: str = "vl"
    batch: int = 0
    precision: str | None = None
    compile: bool = False
    checkpointing: bool = False
    fused_adamw: bool | None = None
    steps: int = 10
    warmup: int = 3
    peak_tflops: float | None = None
    device: str | None = None
    overrides: tuple[str, ...] = ()
    implementation: str = "optimised"
    text_tokens: tuple[int, int] | None = None
    seed: int = 0
    num_images: int = 5000
    captions_per_image: int = 5
    rerank_k: int = 16
    rerank_queries: int = 100


@dataclass
class BenchResult:
    """A benchmark's numbers (times in seconds per step unless named otherwise)."""

    recipe: str
    stage: str
    section: str
    device: str
    precision: str
    batch: int
    settings: dict[str, Any]
    model: dict[str, Any]
    times: dict[str, float] = field(default_factory=dict)
    samples_per_s: float | None = None
    flops_per_sample: float | None = None
    achieved_tflops: float | None = None
    peak_tflops: float | None = None
    mfu: float | None = None
    peak_memory_mb: float | None = None
    memory_kind: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------- synthetic batches
def _text(batch: int, length: int, vocab: int, gen: torch.Generator,
          real_range: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[CLS] words [SEP] [PAD]…`` with real lengths drawn in ``real_range`` (default ``[length/2, length]``)."""
    low, high = real_range or (length // 2, length)
    real = torch.randint(max(2, min(low, length)), max(2, min(high, length)) + 1, (batch,), generator=gen)
    ids = torch.randint(_FIRST_WORD, vocab, (batch, length), generator=gen)
    pos = torch.arange(length)[None]
    mask = (pos < real[:, None]).long()
    ids[:, 0] = _CLS
    ids[pos == (real[:, None] - 1)] = _SEP
    ids = ids * mask
    return ids, mask


def _mlm(ids: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, rate: float = 0.15):
    """``[MASK]`` on ~15 % of the words (at least one per row), labels −100 elsewhere."""
    words = mask.bool() & (ids != _CLS) & (ids != _SEP)
    chosen = words & (torch.rand(ids.shape, generator=gen) < rate)
    first_word = torch.zeros_like(chosen)
    first_word[:, 1] = True
    chosen |= first_word & ~chosen.any(1, keepdim=True)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return torch.where(chosen, torch.full_like(ids, _MASK), ids), labels


def synthetic_batch(data_task: str, cfg, batch: int, text_len: int, image_size: int, gen: torch.Generator,
                    text_tokens: tuple[int, int] | None = None) -> dict:
    """A random batch with the keys and shapes the collator of ``data_task`` produces (see :mod:`vlmo_cli.data.collate`);
    ``text_tokens`` = range of the real text lengths (see :class:`BenchSettings`)."""
    out: dict[str, torch.Tensor] = {}
    if data_task != "text":
        out["pixel_values"] = torch.randn(batch, 3, image_size, image_size, generator=gen)
    if data_task == "images":
        patches = (image_size // cfg.patch_size) ** 2
        scores = torch.rand(batch, patches, generator=gen)
        out["patch_mask"] = scores < scores.kthvalue(max(1, int(0.4 * patches)), dim=1, keepdim=True).values + 1e-9
        return out
    ids, mask = _text(batch, text_len, cfg.vocab_size, gen, text_tokens)
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


# ---------------------------------------------------------------------- FLOPs
def train_flops_per_sample(section: str, cfg, task, text_len: int) -> float:
    """Model FLOPs of one training sample: 3 × the forward FLOPs of the passes the stage's objective runs."""
    from .model.flops import path_flops

    f = path_flops(cfg, text_len)
    image, text, pair = f["image (dual encoder)"], f["text (dual encoder)"], f["pair (fusion encoder)"]
    if section == "pretrain.vision":
        forward = image
    elif section == "pretrain.text":
        forward = text + f["MLM head (per text)"]
    elif section == "pretrain.vl":
        forward = 4 * pair + image + text + f["MLM head (per text)"]
        if getattr(task, "itc_vl", True):
            forward += f.get("image VL branch (extra)", 0) + f.get("text VL branch (extra)", 0)
    elif section == "finetune.nlvr2":
        forward = 2 * pair
    elif section.startswith("finetune.retrieval"):
        forward = image + text + (3 * pair if getattr(task, "with_itm", False) else 0)
    else:  # vqa, classify
        forward = pair
    return 3.0 * forward


# ---------------------------------------------------------------------- the training benchmark
def _resolve(settings: BenchSettings):
    from .config.recipe import load_recipe

    if settings.stage not in STAGE_SECTIONS:
        raise ConfigError(f"unknown bench stage {settings.stage!r}; allowed: {', '.join(STAGE_SECTIONS)}")
    if settings.precision not in (None, "no", "bf16", "fp16"):
        raise ConfigError(f"--precision must be no, bf16 or fp16, got {settings.precision!r}")
    if settings.steps < 1 or settings.warmup < 0:
        raise ConfigError(f"--steps must be >= 1 and --warmup >= 0 (got {settings.steps}, {settings.warmup})")
    section = STAGE_SECTIONS[settings.stage]
    stage = load_recipe(settings.recipe, list(settings.overrides)).resolve(section)
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return section, stage, device


def _default_batch(settings: BenchSettings, recipe_batch: int, device: torch.device) -> int:
    if settings.batch:
        return settings.batch
    return max(1, min(recipe_batch, 32 if device.type == "cuda" else 8))


def build_training(settings: BenchSettings, section: str, stage, device: torch.device, share=None):
    """``(model config, stage, step module, optimizer, fused)`` of a stage, as the training loop builds them (random
    weights). ``share``: a :class:`TrainingStepper` of the same stage whose model (and optimizer, when the fused
    switch agrees) are reused, so that several configurations of a big model fit in memory side by side."""
    from .model.vlmo import VLMo
    from .train.loop import StageModule
    from .train.padding import COMPILED_LENGTH_BUCKETS
    from .train.optim import build_optimizer
    from .train.stages import STAGES, stage_model_config

    stage_def = STAGES[section]
    task = stage.task
    num_answers = getattr(task, "num_answers", 0) or None
    base = stage.model.build_config(image_size=stage.data.image_size)
    cfg = stage_model_config(stage_def, base, task, num_answers=num_answers, text_len=stage.data.max_text_len)
    if not getattr(task, "itc_vl", True):
        cfg = cfg.replace(heads=[h for h in cfg.heads if h != "itc_vl"])
    fused = settings.fused_adamw
    if fused is None:
        fused = stage.train.fused_adamw if isinstance(stage.train.fused_adamw, bool) else device.type == "cuda"
    if share is not None:
        if share.section != section or share.device != device:
            raise ConfigError("a shared benchmark model must come from the same stage and device")
        model, cfg = share.model, share.cfg
        optimizer = share.optimizer if share.fused == fused else build_optimizer(model, stage.train, fused=fused)
    else:
        torch.manual_seed(settings.seed)
        model = VLMo(cfg)
        for name, p in model.named_parameters():
            if not stage_def.trainable(name, cfg, task):
                p.requires_grad_(False)
        model.to(device)
        optimizer = build_optimizer(model, stage.train, fused=fused)
    kind, *flags = settings.implementation.split("+")
    compiled = settings.compile or stage.train.compile
    if kind == "optimised" and set(flags) <= {"untrimmed"}:
        module = StageModule(model, stage_def, task, trim_padding="untrimmed" not in flags,
                             length_buckets=COMPILED_LENGTH_BUCKETS if compiled else None)
    elif kind == "reference" and set(flags) <= {"sdpa", "batched"}:
        from .train.reference_step import ReferenceStageModule

        module = ReferenceStageModule(model, stage_def, task, sdpa="sdpa" in flags, batched_itm="batched" in flags)
    else:
        raise ConfigError(f"implementation must be 'optimised' (optionally '+untrimmed') or 'reference' (optionally "
                          f"'+sdpa', '+batched' ablations), got {settings.implementation!r}")
    if compiled:
        module = torch.compile(module)
    return cfg, stage_def, model, module, optimizer, fused


class TrainingStepper:
    """One benchmarked training step at a time, each split into data / forward / backward / optimizer seconds.

    Kept separate from :func:`bench_training` so that a script can interleave the steps of several configurations
    in one process (``benchmarks/bench_train.py`` measures ratios that way).
    """

    def __init__(self, settings: BenchSettings, share: "TrainingStepper | None" = None) -> None:
        self.settings = settings
        self.section, self.stage, self.device = _resolve(settings)
        if self.section.startswith("eval."):
            raise ConfigError("eval-retrieval is not a training stage: use bench_eval_retrieval")
        self.batch = _default_batch(settings, self.stage.data.batch_size, self.device)
        self.precision = settings.precision or self.stage.train.precision
        self.cfg, self.stage_def, self.model, self.module, self.optimizer, self.fused = build_training(
            settings, self.section, self.stage, self.device, share)
        self.checkpointing = settings.checkpointing or self.stage.train.activation_checkpointing
        self.gen = torch.Generator().manual_seed(settings.seed)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.text_lengths: list[int] = []

    def step(self) -> dict[str, float]:
        from .train.padding import trimmed_length

        dev, s = self.device, self.stage
        t0 = time.perf_counter()
        batch = synthetic_batch(self.stage_def.data_task, self.cfg, self.batch, s.data.max_text_len,
                                s.data.image_size, self.gen, self.settings.text_tokens)
        pin = dev.type == "cuda"
        batch = {k: (v.pin_memory() if pin else v).to(dev, non_blocking=True) for k, v in batch.items()}
        # the text length the model runs at (for the FLOPs): trimmed of shared padding unless the step keeps it
        trims = getattr(self.module, "trim_padding", False)
        extent = trimmed_length(batch, self.module.length_buckets) if trims else None
        self.text_lengths.append(extent if extent is not None else s.data.max_text_len)
        _sync(dev)
        t1 = time.perf_counter()
        self.module.train()
        self.model.set_grad_checkpointing(self.checkpointing)  # per step: a shared model serves several settings
        with self.autocast():
            loss, _ = self.module(batch)
        _sync(dev)
        t2 = time.perf_counter()
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        _sync(dev)
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
        _sync(dev)
        t4 = time.perf_counter()
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"non-finite loss {float(loss)} in the benchmark of {self.section}")
        return {"data": t1 - t0, "forward": t2 - t1, "backward": t3 - t2, "optimizer": t4 - t3, "compute": t4 - t1,
                "step": t4 - t0}


def summarise(per_step: Iterable[dict[str, float]]) -> dict[str, float]:
    """Median seconds of every phase over the timed steps (robust to a stray slow step)."""
    steps = list(per_step)
    return {k: statistics.median(s[k] for s in steps) for k in steps[0]}


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
    memory, kind = _peak_memory_mb(dev)
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


def run_bench(settings: BenchSettings) -> BenchResult:
    """``vlmo bench``: the training benchmark, or the retrieval-evaluation one for ``stage="eval-retrieval"``."""
    if settings.stage == "eval-retrieval":
        from .bench_retrieval import bench_eval_retrieval

        return bench_eval_retrieval(settings)
    return bench_training(settings)
