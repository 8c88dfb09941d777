#!/usr/bin/env bash
# GPU check of the stage-3 training step: VLMo-base, 224 px, bf16, a few batch sizes, the straightforward step
# (`--reference`) for the speed-up, torch.compile on/off and activation checkpointing on/off (texts of 20-40 real
# tokens padded to 40; the `captions` row: COCO-like 8-24 tokens, so the trimmed padding shows), and the `fsdp` row:
# VLMo-large (FSDP_RECIPE) sharded with FSDP2 on 1 process (torchrun, `train.fsdp` path of the training loop, through
# benchmarks/bench_fsdp.py) with activation checkpointing: its peak memory and samples/s; and the `loader` row: the
# stage-3 training loader on this machine's cores (benchmarks/bench_loader.py: prepared directory, webdataset
# shards, `--max-size 320`; 0, 1 and all-but-two workers) against the step rate the eager-b64 row measured. Prints
# a table (samples/s, MFU, peak memory) and the loader's, and writes both as JSON to ${OUT:-.}/gpu_check.json. Made
# for one H100/H200 and about 8 minutes; runs as is from a clone with the package installed (`pip install -e .`), no
# data or weights needed (synthetic batches, random init; the loader generates its JPEGs).
#
#   bash benchmarks/gpu_check.sh                  # defaults
#   BUDGET_S=300 STEPS=6 bash benchmarks/gpu_check.sh
#   ROWS=eager-b64,loader bash benchmarks/gpu_check.sh   # only these rows (the others are listed as not selected)
#
# Robustness: every configuration runs in its own process under `timeout`; an out-of-memory error, a timeout or
# any other failure becomes a row of the table (status column) instead of stopping the script. Configurations that
# no longer fit in the overall budget are reported as skipped. MFU counts the analytic model FLOPs (3 x forward,
# no recomputation) against the dense bf16 peak of the detected GPU (override with PEAK_TFLOPS=...).
set -uo pipefail

OUT_DIR="${OUT:-.}"
BUDGET_S="${BUDGET_S:-450}"          # all configurations together (the script itself adds a few seconds)
STEPS="${STEPS:-10}"
WARMUP="${WARMUP:-3}"
RECIPE="${RECIPE:-base}"
ROWS="${ROWS:-}"                     # comma-separated row names to run; empty = all
FSDP_RECIPE="${FSDP_RECIPE:-large}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python}"
ROWS_DIR="$(mktemp -d)"
mkdir -p "$OUT_DIR"
trap 'rm -rf "$ROWS_DIR"' EXIT

# name | batch | extra flags | timeout (s); most informative first, so a short budget still answers the question
CONFIGS=(
  "eager-b32|32||90"
  "reference-b32|32|--reference|120"
  "eager-b64|64||90"
  "ckpt-b64|64|--checkpointing|90"
  "fsdp-large-ckpt-b32|32|--fsdp --checkpointing|150"
  "loader|32|--loader|150"
  "captions-b64|64|--text-tokens 8-24|90"
  "compile-b64|64|--compile|240"
  "eager-b128|128||100"
  "ckpt-b128|128|--checkpointing|100"
  "compile-ckpt-b128|128|--compile --checkpointing|240"
)

if [[ -n "$ROWS" ]]; then
  known="$(printf '%s,' "${CONFIGS[@]%%|*}")"
  IFS=',' read -ra wanted <<<"$ROWS"
  for row in "${wanted[@]}"; do
    if [[ ",$known" != *",$row,"* ]]; then
      echo "gpu_check: ROWS names '$row', which is not a row; rows: ${known%,}" >&2
      exit 2
    fi
  done
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to torch; nothing to check" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

peak_args=()
if [[ -n "${PEAK_TFLOPS:-}" ]]; then peak_args=(--peak-tflops "$PEAK_TFLOPS"); fi

start=$(date +%s)
order=0
for entry in "${CONFIGS[@]}"; do
  order=$(( order + 1 ))
  IFS='|' read -r name batch flags limit <<<"$entry"
  if [[ -n "$ROWS" && ",$ROWS," != *",$name,"* ]]; then
    echo "{\"order\": $order, \"name\": \"$name\", \"batch\": $batch, \"flags\": \"$flags\", \"status\": \"not selected (ROWS)\"}" \
      > "$ROWS_DIR/$name.status.json"
    continue
  fi
  elapsed=$(( $(date +%s) - start ))
  left=$(( BUDGET_S - elapsed ))
  if (( left < 45 )); then
    echo "{\"order\": $order, \"name\": \"$name\", \"batch\": $batch, \"flags\": \"$flags\", \"status\": \"skipped (time budget)\"}" \
      > "$ROWS_DIR/$name.status.json"
    continue
  fi
  (( limit > left )) && limit=$left
  echo "== $name: batch $batch $flags (timeout ${limit}s, ${left}s of budget left)"
  if [[ "$flags" == --loader ]]; then  # CPU only: the data path against the step rate measured above
    step_rate=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['samples_per_s'])" \
      "$ROWS_DIR/eager-b64.json" 2>/dev/null)
    cores=$(nproc 2>/dev/null || echo 4)
    timeout --kill-after=10 "$limit" "$PY" "$HERE/bench_loader.py" --images 512 --batches 16 --rounds 0 \
      --workers "0,1,$(( cores > 3 ? cores - 2 : 2 ))" ${step_rate:+--step-rate "$step_rate"} \
      --json "$ROWS_DIR/$name.loader.json" > "$ROWS_DIR/$name.log" 2>&1
  elif [[ "$flags" == --fsdp* ]]; then  # one process under torchrun: FSDP2 needs a process group
    # shellcheck disable=SC2086
    timeout --kill-after=10 "$limit" "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
      "$HERE/bench_fsdp.py" --recipe "$FSDP_RECIPE" --batch "$batch" ${flags#--fsdp} --steps "$STEPS" \
      --warmup "$WARMUP" "${peak_args[@]}" --json "$ROWS_DIR/$name.json" > "$ROWS_DIR/$name.log" 2>&1
  else
    # shellcheck disable=SC2086
    timeout --kill-after=10 "$limit" "$PY" -m vlmo_cli bench "$RECIPE" --stage vl --precision bf16 --batch "$batch" \
      $flags --steps "$STEPS" --warmup "$WARMUP" "${peak_args[@]}" --json "$ROWS_DIR/$name.json" \
      > "$ROWS_DIR/$name.log" 2>&1
  fi
  rc=$?
  if (( rc == 0 )); then
    status="ok"
  elif (( rc == 124 || rc == 137 )); then
    status="timeout after ${limit}s"
  elif grep -qiE "out of memory|OutOfMemoryError" "$ROWS_DIR/$name.log"; then
    status="OOM"
  else
    status="failed (exit $rc): $(grep -E "Error|error" "$ROWS_DIR/$name.log" | tail -n 1 | tr -d '"\\' | cut -c1-160)"
  fi
  echo "   -> $status"
  echo "{\"order\": $order, \"name\": \"$name\", \"batch\": $batch, \"flags\": \"$flags\", \"status\": \"$status\", \"seconds\": $(( $(date +%s) - start - elapsed ))}" \
    > "$ROWS_DIR/$name.status.json"
done

ROWS_DIR="$ROWS_DIR" OUT_DIR="$OUT_DIR" BUDGET_S="$BUDGET_S" RECIPE="$RECIPE" "$PY" - <<'EOF'
import json, os, platform, time
from pathlib import Path

import torch

rows_dir, out_dir = Path(os.environ["ROWS_DIR"]), Path(os.environ["OUT_DIR"])
rows = []
for row in sorted((json.loads(p.read_text()) for p in rows_dir.glob("*.status.json")), key=lambda r: r["order"]):
    result_file = rows_dir / f"{row['name']}.json"
    if row["status"] == "ok" and result_file.exists():
        r = json.loads(result_file.read_text())
        row.update(samples_per_s=r["samples_per_s"], mfu=r["mfu"], peak_memory_gib=r["peak_memory_mb"] / 1024,
                   step_ms=r["times"]["step"] * 1e3, forward_ms=r["times"]["forward"] * 1e3,
                   backward_ms=r["times"]["backward"] * 1e3, optimizer_ms=r["times"]["optimizer"] * 1e3,
                   data_ms=r["times"]["data"] * 1e3, warmup_s=r["times"]["warmup_total_s"],
                   tflops=r["achieved_tflops"], peak_tflops=r["peak_tflops"], gflops_per_sample=r["flops_per_sample"] / 1e9,
                   device=r["device"])
    loader_file = rows_dir / f"{row['name']}.loader.json"
    if row["status"] == "ok" and loader_file.exists():
        row["loader"] = json.loads(loader_file.read_text())
    rows.append(row)

head = f"{'config':<20}{'batch':>6}{'samples/s':>11}{'MFU':>8}{'peak GiB':>10}{'step ms':>9}{'fwd':>8}{'bwd':>8}{'opt':>7}  status"
print(f"\nVLMo recipe {os.environ['RECIPE']!r}, stage 3 (pretrain.vl), bf16, synthetic batches")
print(head)
print("-" * len(head))
for r in rows:
    if "samples_per_s" in r:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        print(f"{r['name']:<20}{r['batch']:>6}{r['samples_per_s']:>11.1f}{mfu:>8}{r['peak_memory_gib']:>10.1f}"
              f"{r['step_ms']:>9.1f}{r['forward_ms']:>8.1f}{r['backward_ms']:>8.1f}{r['optimizer_ms']:>7.1f}  ok")
    else:
        status = "ok (loader: below)" if "loader" in r else r["status"]
        print(f"{r['name']:<20}{r['batch']:>6}{'':>11}{'':>8}{'':>10}{'':>9}{'':>8}{'':>8}{'':>7}  {status}")
for r in rows:
    if "loader" in r:
        loader = r["loader"]
        print(f"\nstage-3 training loader, {loader['cpu_count']} cores, against {loader['step_rate']} samples/s "
              f"({loader['step_rate_source']}); target: >= 2x")
        for layout, by_workers in loader["samples_per_s"].items():
            cells = "  ".join(f"{w}: {v:.0f}" for w, v in by_workers.items())
            print(f"{layout:<20}{cells}   best {loader['best_x_step'][layout]:.2f}x the step; 2x needs "
                  f"{loader['cores_per_gpu_for_2x'][layout]} cores per GPU")
by_name = {r["name"]: r for r in rows if "samples_per_s" in r}
speedup = None
if "eager-b32" in by_name and "reference-b32" in by_name:  # the same synthetic batches (same seed)
    speedup = by_name["eager-b32"]["samples_per_s"] / by_name["reference-b32"]["samples_per_s"]
    print(f"\noptimised step vs the straightforward one (batch 32): {speedup:.2f}x (target >= 2x)")
report = {
    "check": f"recipe {os.environ['RECIPE']}, stage 3 (pretrain.vl), bf16",
    "speedup_vs_reference_b32": speedup,
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    "torch": torch.__version__, "python": platform.python_version(), "budget_s": int(os.environ["BUDGET_S"]),
    "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows,
}
out = out_dir / "gpu_check.json"
out.write_text(json.dumps(report, indent=2) + "\n")
print(f"\nwrote {out}")
EOF
