"""CPU (or GPU) training throughput: stage-3 optimisations as ratios against the straightforward oracle, measured side
by side in one process, plus samples/s of every stage of the tiny and base recipes.

Usage (from the repository root, package installed)::

    python benchmarks/bench_train.py                  # tiny + base, 1 thread, JSON to benchmarks/bench_train.json
    python benchmarks/bench_train.py --skip-base --rounds 9

Why interleaved: on a shared machine the speed drifts by tens of percent within a minute. Every round runs one step
of every configuration (in a rotated order), so drift hits all of them alike; the per-configuration median over the
rounds and the ratio of medians are robust to it. All configurations of one recipe share the model weights (and
the AdamW state, where the fused switch agrees), so that base-sized models fit in memory side by side.

Configurations of the stage-3 step (``pretrain.vl``):

* ``reference``: the oracle (:mod:`vlmo_cli.bench.reference_step`): manual fp32 attention, four fusion passes;
* ``reference+sdpa``: attention through ``scaled_dot_product_attention``;
* ``reference+batched``: the three ITM fusion passes as one batched pass; ``reference+sdpa+batched``: both;
* ``optimised``: the training code (``StageModule`` + ``vl_objective``): the text padding every row shares trimmed,
  SDPA, one fusion pass for the ITM and MLM rows, the MLM decoder on the masked positions only;
* ``optimised+untrimmed``: the same, with the text kept at the padded ``max_text_len`` (what trimming saves);
* ``optimised+bf16``: bf16 autocast; ``optimised+fused``: fused AdamW; ``optimised+ckpt``: activation checkpointing
  (a memory saver; its cost shows here); ``optimised+bf16+fused``: both switches (the GPU recipe setting);
  ``optimised+compile``: ``torch.compile`` (with ``--compile``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from vlmo_cli.bench import BenchSettings, TrainingStepper
from vlmo_cli.cli.bench import parse_range

STAGE3 = [
    ("reference", dict(implementation="reference")),
    ("reference+sdpa", dict(implementation="reference+sdpa")),
    ("reference+batched", dict(implementation="reference+batched")),
    ("reference+sdpa+batched", dict(implementation="reference+sdpa+batched")),
    ("optimised", dict()),
    ("optimised+untrimmed", dict(implementation="optimised+untrimmed")),
    ("optimised+bf16", dict(precision="bf16")),
    ("optimised+fused", dict(fused_adamw=True)),
    ("optimised+ckpt", dict(checkpointing=True)),
    ("optimised+bf16+fused", dict(precision="bf16", fused_adamw=True)),
]
STAGES = ["vision", "text", "vl", "vqa", "nlvr2", "retrieval"]


def side_by_side(recipe: str, batch: int, rounds: int, warmup: int, configs, overrides=(), text_tokens=None) -> dict:
    """Median seconds per step of each configuration, interleaved round by round (every configuration draws the same
    synthetic batches: same seed)."""
    steppers: dict[str, TrainingStepper] = {}
    first = None
    for label, extra in configs:
        settings = BenchSettings(recipe, stage="vl", batch=batch, precision=extra.pop("precision", "no"),
                                 fused_adamw=extra.pop("fused_adamw", False), overrides=tuple(overrides),
                                 text_tokens=text_tokens, **extra)
        steppers[label] = first = TrainingStepper(settings, share=first)
    for _ in range(warmup):
        for stepper in steppers.values():
            stepper.step()
    times: dict[str, list[dict]] = {label: [] for label in steppers}
    labels = list(steppers)
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:
            times[label].append(steppers[label].step())
    out = {}
    ref = statistics.median(t["compute"] for t in times["reference"])
    for label, runs in times.items():
        med = {k: statistics.median(t[k] for t in runs) for k in runs[0]}
        out[label] = {"median_step_s": med["compute"], "samples_per_s": batch / med["compute"], "speedup_vs_reference":
                      ref / med["compute"], "phases_s": med}
    return out


def per_stage(recipe: str, batch: int, steps: int, warmup: int, overrides=(), text_tokens=None) -> dict:
    """Samples/s of the optimised step of every training stage (not interleaved: compare within a stage only)."""
    out = {}
    for stage in STAGES:
        stepper = TrainingStepper(BenchSettings(recipe, stage=stage, batch=batch, precision="no", fused_adamw=False,
                                                overrides=tuple(overrides), text_tokens=text_tokens))
        for _ in range(warmup):
            stepper.step()
        med = statistics.median(stepper.step()["compute"] for _ in range(steps))
        out[stage] = {"median_step_s": med, "samples_per_s": batch / med}
        del stepper
    return out


def _table(title: str, rows: dict) -> str:
    lines = [f"\n{title}", f"{'configuration':<22}{'s/step':>10}{'samples/s':>12}{'× reference':>13}"]
    for label, r in rows.items():
        if not isinstance(r, dict):
            continue
        lines.append(f"{label:<22}{r['median_step_s']:>10.3f}{r['samples_per_s']:>12.2f}"
                     f"{r.get('speedup_vs_reference', float('nan')):>13.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: stable on a "
                        "shared machine)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timed rounds of the stage-3 comparison")
    parser.add_argument("--tiny-batch", type=int, default=16)
    parser.add_argument("--base-batch", type=int, default=2)
    parser.add_argument("--base-rounds", type=int, default=3)
    parser.add_argument("--skip-base", action="store_true")
    parser.add_argument("--skip-stages", action="store_true", help="only the stage-3 comparison")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to warm up on CPU)")
    parser.add_argument("--only", default="", help="comma-separated configuration labels to run (default: all)")
    parser.add_argument("--tiny-text-tokens", default="8-11", help="real text lengths MIN-MAX of the tiny batches "
                        "(default: the demo captions' range, which the quickstart trains on)")
    parser.add_argument("--base-text-tokens", default="8-24", help="real text lengths MIN-MAX of the base batches "
                        "(default: COCO-like captions, 6-22 words; padded to 40 as in the official recipe)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("bench_train.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = STAGE3 + ([("optimised+compile", dict(compile=True))] if args.compile else [])
    if args.only:
        wanted = set(args.only.split(","))
        configs = [c for c in configs if c[0] in wanted | {"reference"}]  # the ratios need the reference
    report: dict = {"torch": torch.__version__, "threads": args.threads, "device": "cuda" if torch.cuda.is_available()
                    else "cpu", "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    runs = [("tiny", args.tiny_batch, args.rounds, parse_range(args.tiny_text_tokens, "--tiny-text-tokens"))]
    if not args.skip_base:
        runs.append(("base", args.base_batch, args.base_rounds, parse_range(args.base_text_tokens,
                                                                            "--base-text-tokens")))
    for recipe, batch, rounds, text_tokens in runs:
        key = f"{recipe}_stage3_batch{batch}"
        report[key] = side_by_side(recipe, batch, rounds, 1, [(l, dict(e)) for l, e in configs],
                                   text_tokens=text_tokens)
        report[key]["text_tokens"] = text_tokens
        print(_table(f"{recipe} stage 3 (pretrain.vl), batch {batch}, text {text_tokens[0]}-{text_tokens[1]} tokens, "
                     f"median of {rounds} interleaved rounds", report[key]), flush=True)
        if not args.skip_stages:
            steps = 3 if recipe == "tiny" else 2
            report[f"{recipe}_stages_batch{batch}"] = stages = per_stage(recipe, batch, steps, 1,
                                                                         text_tokens=text_tokens)
            print(_table(f"{recipe}: optimised step per stage, batch {batch}", stages), flush=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
