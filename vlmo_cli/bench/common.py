"""What every benchmark shares: its settings and result, the device helpers (peak FLOP/s, synchronisation, peak
memory) and synthetic text rows."""

from __future__ import annotations

import platform
import resource
import statistics
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch

from ..config.schema import bench_stages
from ..errors import ConfigError

#: ``vlmo bench --stage`` value → recipe section (from the one list, :data:`vlmo_cli.config.schema.STAGES`)
STAGE_SECTIONS = bench_stages()

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
CLS_ID, SEP_ID, MASK_ID, FIRST_WORD_ID = 2, 3, 4, 5


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


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
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
        stage: a key of :data:`STAGE_SECTIONS` (the ``bench`` names of :data:`vlmo_cli.config.schema.STAGES`).
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


def synthetic_text(batch: int, length: int, vocab: int, gen: torch.Generator,
          real_range: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[CLS] words [SEP] [PAD]…`` with real lengths drawn in ``real_range`` (default ``[length/2, length]``)."""
    low, high = real_range or (length // 2, length)
    real = torch.randint(max(2, min(low, length)), max(2, min(high, length)) + 1, (batch,), generator=gen)
    ids = torch.randint(FIRST_WORD_ID, vocab, (batch, length), generator=gen)
    pos = torch.arange(length)[None]
    mask = (pos < real[:, None]).long()
    ids[:, 0] = CLS_ID
    ids[pos == (real[:, None] - 1)] = SEP_ID
    ids = ids * mask
    return ids, mask


def resolve_settings(settings: BenchSettings):
    """``(recipe section, resolved stage, device)`` of a benchmark, its settings checked."""
    from ..config.recipe import load_recipe

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


def default_batch(settings: BenchSettings, recipe_batch: int, device: torch.device) -> int:
    if settings.batch:
        return settings.batch
    return max(1, min(recipe_batch, 32 if device.type == "cuda" else 8))


def summarise(per_step: Iterable[dict[str, float]]) -> dict[str, float]:
    """Median seconds of every phase over the timed steps (robust to a stray slow step)."""
    steps = list(per_step)
    return {k: statistics.median(s[k] for s in steps) for k in steps[0]}
