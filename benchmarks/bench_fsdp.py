"""Stage 3 under FSDP2 (``train.fsdp = true``, the training loop's Accelerator and sharding): samples/s, MFU and
peak memory per process, synthetic batches, random weights.

Launch with torchrun (FSDP needs a process group, one process is enough)::

    torchrun --standalone --nproc_per_node 1 benchmarks/bench_fsdp.py --recipe large --batch 32 --checkpointing \\
        --json fsdp.json

Writes the same fields as ``vlmo bench --json`` (``samples_per_s``, ``mfu``, ``peak_memory_mb``, ``times``), so
``benchmarks/gpu_check.sh`` tabulates it with the other rows. Refuses to report when the model did not end up
sharded (a launch without torchrun).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="large")
    parser.add_argument("--batch", type=int, default=32, help="per process")
    parser.add_argument("--precision", default="bf16", choices=["no", "bf16"])
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: by GPU)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from vlmo_cli.bench import BenchSettings, build_training, default_peak_tflops, device_name, synthetic_batch, \
        train_flops_per_sample
    from vlmo_cli.bench.common import peak_memory_mb
    from vlmo_cli.config.recipe import load_recipe
    from vlmo_cli.train.distributed_setup import make_accelerator, prepare_for_fsdp, sharded_grad_norm, uses_fsdp

    section = "pretrain.vl"
    stage = load_recipe(args.recipe, []).resolve(section)
    accelerator = make_accelerator(SimpleNamespace(fsdp=True, precision=args.precision, compile=False,
                                                   fsdp_reshard_after_forward=True))
    if not uses_fsdp(accelerator):
        raise SystemExit("bench_fsdp: FSDP is not active (launch with torchrun --nproc_per_node N)")
    device = accelerator.device
    settings = BenchSettings(recipe=args.recipe, stage="vl", batch=args.batch, fused_adamw=device.type == "cuda")
    parts = build_training(settings, section, stage, device)
    cfg, stage_def, model, module, optimizer = parts.cfg, parts.stage_def, parts.model, parts.module, parts.optimizer
    prepare_for_fsdp(model)
    model.set_grad_checkpointing(args.checkpointing)
    module, optimizer = accelerator.prepare(module, optimizer)
    gen = torch.Generator().manual_seed(accelerator.process_index)
    text_len = stage.data.max_text_len
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: list[dict[str, float]] = []
    warmup_start = time.perf_counter()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            warmup_total = time.perf_counter() - warmup_start
        t0 = time.perf_counter()
        batch = synthetic_batch(stage_def.data_task, cfg, args.batch, text_len, stage.data.image_size, gen)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        sync()
        t1 = time.perf_counter()
        module.train()
        with accelerator.autocast():
            loss, _ = module(batch)
        sync()
        t2 = time.perf_counter()
        accelerator.backward(loss)
        sync()
        t3 = time.perf_counter()
        trained = [p for p in module.parameters() if p.requires_grad]
        if stage.train.grad_clip > 0:
            accelerator.clip_grad_norm_(trained, stage.train.grad_clip)
        else:
            sharded_grad_norm(trained)  # the loop computes it for its finiteness check
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        t4 = time.perf_counter()
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"non-finite loss {float(loss)}")
        if step >= args.warmup:
            times.append({"data": t1 - t0, "forward": t2 - t1, "backward": t3 - t2, "optimizer": t4 - t3, "step": t4 - t0})
    median = {k: sorted(t[k] for t in times)[len(times) // 2] for k in times[0]}
    compute = median["forward"] + median["backward"] + median["optimizer"]
    samples_per_s = args.batch / compute  # per process
    flops = train_flops_per_sample(section, cfg, stage.task, text_len)
    peak = args.peak_tflops or default_peak_tflops(device, args.precision)
    achieved = samples_per_s * flops / 1e12
    memory, kind = peak_memory_mb(device)
    result = {"recipe": args.recipe, "stage": section, "fsdp_processes": accelerator.num_processes,
              "batch_per_process": args.batch, "checkpointing": args.checkpointing, "precision": args.precision,
              "samples_per_s": samples_per_s, "flops_per_sample": flops, "achieved_tflops": achieved,
              "peak_tflops": peak, "mfu": achieved / peak if peak else None, "peak_memory_mb": memory,
              "memory_kind": kind, "device": device_name(device),
              "times": {**median, "warmup_total_s": warmup_total}}
    if accelerator.is_main_process:
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
