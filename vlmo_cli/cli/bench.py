"""``vlmo bench RECIPE [overrides] --stage …``: training / retrieval-evaluation throughput on synthetic batches."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..config.schema import bench_stages
from ..errors import ConfigError

_STAGES = ", ".join(bench_stages())


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def render(result, console: Console) -> None:
    """The result as a rich table (one row per measured quantity)."""
    table = Table(title=f"vlmo bench {result.recipe} --stage {result.stage} ({result.section}) on {result.device}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("batch / precision", f"{result.batch} / {result.precision}")
    model = result.model
    table.add_row("model", f"{model['size']}: {model['depth']}×{model['embed_dim']}, {model['image_size']} px, "
                           f"text {model['text_len']}")
    if result.stage == "eval-retrieval":
        extra = result.extra
        table.add_row("images × texts", f"{extra['num_images']:,} × {extra['num_texts']:,}")
        for key, label in (("encode_images_s", "encode images"), ("encode_texts_s", "encode texts"),
                           ("encode_s", "encode (total)"), ("rank_s", "rank (fp32 blocks)")):
            table.add_row(label, _fmt_s(result.times[key]))
        table.add_row("rank / encode", f"{100 * extra['rank_fraction_of_encode']:.2f} %")
        if "rerank_s" in result.times:
            note = (f" (extrapolated from {extra['rerank_queries']} image queries)"
                    if extra["rerank_extrapolated"] else "")
            table.add_row(f"re-rank top {extra['rerank_k']}{note}", _fmt_s(result.times["rerank_s"]))
            table.add_row("re-rank pairs/s", f"{extra['rerank_pairs_per_s']:.1f}")
        table.add_row("encoded items/s", f"{result.samples_per_s:.1f}")
    else:
        times = result.times
        step = times["step"]
        for phase in ("data", "forward", "backward", "optimizer"):
            table.add_row(f"{phase} (median per step)", f"{_fmt_s(times[phase])}  ({100 * times[phase] / step:.0f} %)")
        table.add_row("step (median)", _fmt_s(step))
        table.add_row("[bold]samples/s[/] (forward + backward + optimizer)", f"[bold]{result.samples_per_s:.2f}")
        table.add_row("samples/s including data", f"{result.extra['samples_per_s_with_data']:.2f}")
        table.add_row("model GFLOPs per sample (train)", f"{result.flops_per_sample / 1e9:.2f}")
        table.add_row("achieved TFLOP/s", f"{result.achieved_tflops:.3f}")
        if result.mfu is not None:
            table.add_row("MFU", f"{100 * result.mfu:.1f} % of {result.peak_tflops:g} TFLOP/s")
        else:
            table.add_row("MFU", "n/a (no peak known for this device: pass --peak-tflops)")
    table.add_row(f"peak memory ({result.memory_kind})", f"{result.peak_memory_mb:,.0f} MiB")
    console.print(table)


def parse_range(text: str | None, option: str) -> tuple[int, int] | None:
    """``"8-24"`` → ``(8, 24)``."""
    if text is None:
        return None
    low, sep, high = text.partition("-")
    if not (sep and low.strip().isdigit() and high.strip().isdigit()) or int(low) > int(high) or int(low) < 2:
        raise ConfigError(f"{option} takes MIN-MAX with 2 <= MIN <= MAX (tokens including [CLS] and [SEP]), "
                          f"got {text!r}")
    return int(low), int(high)


def bench(
    recipe: str = typer.Argument(..., help="a recipe file or a shipped name (tiny, base, base_plus, large)"),
    overrides: list[str] = typer.Argument(None, help="recipe overrides key.path=value"),
    stage: str = typer.Option("vl", "--stage", help=f"what to time: {_STAGES}"),
    batch: int = typer.Option(0, "--batch", help="samples per step; 0 = recipe batch capped at 32 (GPU) / 8 (CPU)"),
    precision: str = typer.Option(None, "--precision", help="no, bf16 or fp16 (default: the recipe's)"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the step"),
    checkpointing: bool = typer.Option(False, "--checkpointing", help="activation checkpointing per block"),
    fused_adamw: bool = typer.Option(None, "--fused-adamw/--no-fused-adamw", help="default: the recipe's switch"),
    steps: int = typer.Option(10, "--steps", help="timed steps"),
    warmup: int = typer.Option(3, "--warmup", help="untimed steps first"),
    peak_tflops: float = typer.Option(None, "--peak-tflops", help="peak TFLOP/s for MFU (default: by device)"),
    device: str = typer.Option(None, "--device", help="cuda, cpu, cuda:1 … (default: cuda when available)"),
    reference: bool = typer.Option(False, "--reference", help="time the straightforward stage-3 oracle instead"),
    untrimmed: bool = typer.Option(False, "--untrimmed", help="keep the text padding (to measure what trimming saves)"),
    text_tokens: str = typer.Option(
        None, "--text-tokens", help="MIN-MAX real text lengths of the synthetic rows, e.g. 8-24 for COCO-like "
        "captions (default: max_text_len/2 to max_text_len)"),
    num_images: int = typer.Option(5000, "--num-images", help="eval-retrieval: N images (5 N captions)"),
    rerank_k: int = typer.Option(16, "--rerank-k", help="eval-retrieval: re-rank the top k with ITM (0 = off)"),
    rerank_queries: int = typer.Option(
        100, "--rerank-queries", help="eval-retrieval: image queries re-ranked for the estimate (0 = all)"),
    json_out: Path = typer.Option(None, "--json", help="also write the result as JSON"),
) -> None:
    """Time training steps (data / forward / backward / optimizer, samples/s, MFU, peak memory) or the retrieval
    evaluation (encoding, ranking, re-ranking) on synthetic batches of the recipe's shapes."""
    from ..bench import BenchSettings, run_bench

    settings = BenchSettings(
        recipe=recipe, stage=stage, batch=batch, precision=precision, compile=compile, checkpointing=checkpointing,
        fused_adamw=fused_adamw, steps=steps, warmup=warmup, peak_tflops=peak_tflops, device=device,
        overrides=tuple(overrides or ()), text_tokens=parse_range(text_tokens, "--text-tokens"),
        implementation="reference" if reference else "optimised+untrimmed" if untrimmed else "optimised",
        num_images=num_images, rerank_k=rerank_k, rerank_queries=rerank_queries,
    )
    result = run_bench(settings)
    render(result, Console())
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
