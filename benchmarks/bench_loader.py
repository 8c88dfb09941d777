"""Does the data path keep up with stage 3? Loader samples/s at 224 px from 640x480 JPEGs of realistic size.

Run: ``python benchmarks/bench_loader.py [--images 384] [--batches 16] [--workers 0,1,2,4] [--json PATH]``. Writes
JPEGs (quality 90, photo-like: smooth shapes plus sensor-like noise, about 100 KB each, as COCO's 640x480 images are)
and measures stage 3's training loader (:func:`vlmo_cli.data.loader.build_dataloader`, task ``pairs``: train transform
with RandomResizedCrop + flip + RandAugment, tokenisation, MLM masking; batch 32) over three layouts of them:

- ``prepared``: ``vlmo prepare pairs`` output (Arrow, images stored as found);
- ``shards``: ``vlmo prepare pairs --out-format webdataset`` output (8 tar shards with ``sizes.json``), read by the
  training shard stream (resampled, so that it never runs dry while timed);
- ``prepared_max320``: prepared with ``--max-size 320`` (images re-encoded with a 320 px shorter side).

Each configuration is timed in its steady state: ``--batches`` batches after the ones the DataLoader has prefetched.
With one worker process a core makes every batch, so the one-worker rate is the rate per core, and
``cores_per_gpu_for_2x`` = 2 x the step rate / that rate. The decoder comparison: PIL (``decode_rgb``) against
``torchvision.io.decode_jpeg`` per image (time, and the pixels of both, also after the eval transform), and how a
sample's time splits into decode / transform. The load average before and after is printed: numbers taken while
other jobs share the cores are not per-core rates. Prints one JSON object. The stage-3 step rate it compares against
is stated with ``--step-rate`` (samples/s of one GPU; default: base at 224 px on one H100 at 45 % MFU in bf16, from
the analytic FLOPs).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlmo_cli.data.images import decode_rgb
from vlmo_cli.data.loader import build_dataloader
from vlmo_cli.data.prepare import PrepareOptions, prepare
from vlmo_cli.data.sources import FilePairsSource
from vlmo_cli.data.streaming import StreamOptions
from vlmo_cli.data.transforms import build_transform

WIDTH, HEIGHT, QUALITY = 640, 480, 90
H100_BF16_TFLOPS = 989.0
TARGET_MFU = 0.45
BATCH = 32


def photo_like(rng: np.random.RandomState) -> Image.Image:
    """A 640x480 image that compresses like a photograph: smooth large-scale structure, edges, and fine noise."""
    coarse = rng.randint(0, 256, (6, 8, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.BICUBIC)).astype(np.float32)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    for _ in range(6):  # a few hard-edged shapes
        cy, cx, r = rng.randint(0, HEIGHT), rng.randint(0, WIDTH), rng.randint(20, 140)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.randint(0, 256, 3)
    img += rng.normal(0, 9, img.shape)  # texture / sensor noise: what makes real JPEGs ~100 KB and not ~20 KB
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_images(root: Path, n: int) -> tuple[Path, list[tuple[bytes, str]]]:
    rng = np.random.RandomState(0)
    (root / "imgs").mkdir(parents=True)
    lines, samples = [], []
    for i in range(n):
        buf = io.BytesIO()
        photo_like(rng).save(buf, format="JPEG", quality=QUALITY)
        data = buf.getvalue()
        (root / "imgs" / f"{i}.jpg").write_bytes(data)
        caption = f"a photo of object {i % 17} next to a {['red', 'green', 'blue'][i % 3]} thing"
        lines.append(f"imgs/{i}.jpg\t{caption}\n")
        samples.append((data, caption))
    (root / "pairs.tsv").write_text("".join(lines))
    return root / "pairs.tsv", samples


def write_shards(root: Path, tsv: Path, tokenizer: Path, per_shard: int) -> None:
    """The images as webdataset shards, written the way ``vlmo prepare pairs --out-format webdataset`` does."""
    from vlmo_cli.data.shard_writer import write_shards as write

    write(FilePairsSource(tsv, "tsv"), root, PrepareOptions(workers=1, tokenizer=tokenizer),
          samples_per_shard=per_shard)


def prefetched(workers: int) -> int:
    """Batches a DataLoader holds ready after its first one (``prefetch_factor`` 2 per worker): the timed window
    starts after them, so it measures production, not the queue."""
    return 1 + 2 * workers


def rate(loader, batches: int, workers: int) -> float:
    """Steady-state samples/s: ``batches`` batches after the prefetched ones (the loader must hold them all)."""
    warm = prefetched(workers)
    if len(loader) < warm + batches:
        raise SystemExit(f"a loader of {len(loader)} batches cannot time {batches} after {warm} prefetched ones; "
                         "use more --images")
    it = iter(loader)
    for _ in range(warm):
        next(it)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it)["pixel_values"])
    return n / (time.perf_counter() - start)


def training_loader(data, tokenizer: Path, workers: int, **stream):
    """Stage 3's training loader (task ``pairs``: train transform, tokenisation, MLM masking) over ``data``."""
    return build_dataloader(data, "train", "pairs", tokenizer=tokenizer, image_size=224, patch_size=16,
                            batch_size=BATCH, workers=workers, mlm=True, max_text_len=40, **stream)


def loaders(root: Path, tokenizer: Path, images: int, batches: int, workers: int, layouts: list[str]) -> dict:
    """One loader per layout, each long enough for the prefetched batches plus the timed ones."""
    needed = (prefetched(workers) + batches + 1) * BATCH
    copies = -(-needed // images)  # a prepared directory listed again is one longer epoch (the same images)
    made = {}
    for layout in layouts:
        if layout == "shards":  # an epoch in which every worker stream alone could fill the window
            epoch = StreamOptions(resampled=True, samples_per_epoch=needed * max(1, workers))
            made[layout] = training_loader(sorted(str(p) for p in (root / "shards").rglob("*.tar")), tokenizer,
                                           workers, stream=epoch)
        else:
            made[layout] = training_loader([root / layout] * copies, tokenizer, workers)
    return made


def decoders(samples: list[tuple[bytes, str]], n: int = 48, rounds: int = 7) -> dict:
    """PIL against torchvision.io.decode_jpeg: time per image (median of ``rounds`` passes over ``n`` images, the
    variants interleaved) and the pixel differences."""
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as F

    eval_t = build_transform(224, train=False)
    train_t = build_transform(224, train=True)

    def tv(data: bytes) -> torch.Tensor:
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))

    def tv_pil(data: bytes) -> Image.Image:  # what the PIL transforms (RandAugment) would need
        return Image.fromarray(tv(data).permute(1, 2, 0).contiguous().numpy())

    def tv_resize(data: bytes) -> torch.Tensor:
        return F.resize(tv(data), [224, 224], interpolation=F.InterpolationMode.BICUBIC, antialias=True)

    variants = {"pil_decode_ms": decode_rgb, "decode_jpeg_ms": tv, "decode_jpeg_to_pil_ms": tv_pil,
                "decode_jpeg_tensor_resize_ms": tv_resize,
                "pil_decode_eval_transform_ms": lambda d: eval_t(decode_rgb(d)),
                "pil_decode_train_transform_ms": lambda d: train_t(decode_rgb(d))}
    times: dict[str, list[float]] = {k: [] for k in variants}
    images = [d for d, _ in samples[:n]]
    for r in range(rounds):
        names = list(variants)
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            for data in images:
                variants[name](data)
            times[name].append((time.perf_counter() - start) / len(images) * 1e3)
    out: dict[str, float] = {k: round(float(np.median(v)), 2) for k, v in times.items()}
    max_raw = max_eval = max_resize = 0.0
    for data in images:
        pil, t = decode_rgb(data), tv(data)
        max_raw = max(max_raw, float((torch.from_numpy(np.array(pil)).permute(2, 0, 1).int() - t.int()).abs().max()))
        a = eval_t(pil)
        max_eval = max(max_eval, float((a - eval_t(tv_pil(data))).abs().max()) * 127.5)  # in 0-255 levels
        c = tv_resize(data).float() / 127.5 - 1.0  # decode_jpeg + tensor resize, normalised like the transform
        max_resize = max(max_resize, float((a - c).abs().max()) * 127.5)
    out.update(decoded_pixels_max_diff=max_raw, after_eval_transform_max_diff_levels=round(max_eval, 3),
               tensor_resize_vs_pil_max_diff_levels=round(max_resize, 3))
    return out


def assumed_step_rate() -> float:
    """Stage-3 samples/s of one H100 for base at 224 px at the 45 % MFU target (analytic FLOPs, text 40)."""
    from types import SimpleNamespace

    from vlmo_cli.bench import train_flops_per_sample
    from vlmo_cli.model.config import get_config

    flops = train_flops_per_sample("pretrain.vl", get_config("base"), SimpleNamespace(itc_vl=True), 40)
    return H100_BF16_TFLOPS * 1e12 * TARGET_MFU / flops


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--batches", type=int, default=16, help="timed batches per configuration")
    parser.add_argument("--workers", default="0,1,2,4", help="DataLoader worker counts to measure, comma-separated")
    parser.add_argument("--max-size", type=int, default=320,
                        help="also prepare with --max-size (shorter side; 320 keeps every 224 px crop of scale >= 0.5 "
                             "a downscale) and measure that; 0 = skip")
    parser.add_argument("--rounds", type=int, default=7, help="passes of the decoder comparison (0 = skip it)")
    parser.add_argument("--step-rate", type=float, default=None, help="stage-3 samples/s of one GPU to compare with")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    workers = [int(w) for w in args.workers.split(",")]
    step_rate = args.step_rate or assumed_step_rate()
    results: dict = {"images": args.images, "image": f"{WIDTH}x{HEIGHT} JPEG q{QUALITY}", "batch": BATCH,
                     "cpu_count": os.cpu_count(), "load_average_before": round(os.getloadavg()[0], 2),
                     "step_rate": round(step_rate, 1),
                     "step_rate_source": "--step-rate" if args.step_rate else
                     "assumed: base stage 3, 224 px, one H100 at 45 % MFU (bf16 989 TFLOPS), analytic FLOPs"}
    layouts = ["prepared", "shards"] + ([f"prepared_max{args.max_size}"] if args.max_size else [])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tsv, samples = make_images(root / "src", args.images)
        results["mean_jpeg_kb"] = round(float(np.mean([len(d) for d, _ in samples])) / 1024, 1)
        from vlmo_cli.data.tokenizer import train_tokenizer

        tokenizer = train_tokenizer([c for _, c in samples], vocab_size=200, method="words").save(root / "tok")
        prepare(FilePairsSource(tsv, "tsv"), root / "prepared", PrepareOptions(workers=1, tokenizer=tokenizer))
        write_shards(root / "shards", tsv, tokenizer, per_shard=max(1, args.images // 8))
        if args.max_size:
            prepare(FilePairsSource(tsv, "tsv"), root / layouts[-1],
                    PrepareOptions(workers=1, tokenizer=tokenizer, max_size=args.max_size))
        if args.rounds:
            results["decoders"] = decoders(samples, rounds=args.rounds)
        rates: dict[str, dict[str, float]] = {layout: {} for layout in layouts}
        for w in workers:
            for layout, loader in loaders(root, tokenizer, args.images, args.batches, w, layouts).items():
                rates[layout][f"w{w}"] = round(rate(loader, args.batches, w), 1)
    results["samples_per_s"] = rates
    results["load_average_after"] = round(os.getloadavg()[0], 2)
    results["per_core"], results["cores_per_gpu_for_2x"], results["best_x_step"] = {}, {}, {}
    for layout, by_workers in rates.items():
        # one worker process makes every batch on one core while the main process only receives them; without
        # workers the main process makes them between its own receives
        core = by_workers.get("w1", by_workers.get("w0"))
        if core:
            results["per_core"][layout] = core
            results["cores_per_gpu_for_2x"][layout] = round(2 * step_rate / core, 1)
        results["best_x_step"][layout] = round(max(by_workers.values()) / step_rate, 3)
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
