"""Does the data path keep up with stage 3? Loader samples/s at 224 px from 640x480 JPEGs of realistic size.

Run: ``python benchmarks/bench_loader.py [--images 384] [--batches 8] [--workers 0,2,4]``. Writes JPEGs (quality 90,
photo-like: smooth shapes plus sensor-like noise, about 100 KB each, as COCO's 640x480 images are), then measures

- ``prepared``: the training loader (:func:`vlmo_cli.data.loader.build_dataloader`, task ``pairs``, train transform
  with RandomResizedCrop + flip + RandAugment, tokenisation and MLM masking; batch 32) over the images prepared with
  ``vlmo prepare pairs`` (Arrow, stored as found);
- ``shards``: the same images written as webdataset tar shards (``webdataset.TarWriter``, 4 shards), read with
  ``webdataset.WebDataset`` in a DataLoader: raw shard read + JPEG decode + the same train transform (no text);

with 0, 2 and 4 workers (and ``prepared_max320``: prepared with ``--max-size 320``, images stored re-encoded with a
320 px shorter side), and the decoders per image: PIL (``decode_rgb``) against ``torchvision.io.decode_jpeg``
(the pixels of both, and after the same eval transform), and how a sample's time splits into decode / transform.
Prints one JSON object. The stage-3 step rate it compares against is stated with ``--step-rate`` (samples/s of one
GPU; default: base at 224 px on one H100 at 45 % MFU in bf16, from the analytic FLOPs).
"""

from __future__ import annotations

import argparse
import io
import json
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
from vlmo_cli.data.transforms import build_transform

WIDTH, HEIGHT, QUALITY = 640, 480, 90
H100_BF16_TFLOPS = 989.0
TARGET_MFU = 0.45


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


def write_shards(root: Path, samples: list[tuple[bytes, str]], shards: int = 4) -> list[str]:
    import webdataset as wds

    root.mkdir(parents=True)
    per = -(-len(samples) // shards)
    paths = []
    for s in range(shards):
        path = root / f"{s:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(s * per, min(len(samples), (s + 1) * per)):
                data, caption = samples[i]
                sink.write({"__key__": f"{i:08d}", "jpg": data, "txt": caption})
        paths.append(str(path))
    return paths


def rate(loader, batches: int) -> float:
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += len(batch["pixel_values"])
    return n / (time.perf_counter() - start)


def prepared_loader(prepared: Path, tokenizer: Path, workers: int):
    return build_dataloader(prepared, "train", "pairs", tokenizer=tokenizer, image_size=224, patch_size=16,
                            batch_size=32, workers=workers, mlm=True, max_text_len=40)


class _ShardTransform:
    def __init__(self) -> None:
        self.transform = build_transform(224, train=True)

    def __call__(self, sample: dict) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.transform(decode_rgb(sample["jpg"]))}


def shard_loader(paths: list[str], workers: int):
    import webdataset as wds

    dataset = wds.WebDataset(paths, shardshuffle=False, empty_check=False).map(_ShardTransform())
    return torch.utils.data.DataLoader(dataset.batched(32, partial=False), batch_size=None, num_workers=workers)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--workers", default="0,2,4")
    parser.add_argument("--max-size", type=int, default=320,
                        help="also prepare with --max-size (shorter side; 320 keeps every 224 px crop of scale >= 0.5 "
                             "a downscale) and measure that; 0 = skip")
    parser.add_argument("--step-rate", type=float, default=None, help="stage-3 samples/s of one GPU to compare with")
    args = parser.parse_args()
    torch.set_num_threads(1)
    workers = [int(w) for w in args.workers.split(",")]
    step_rate = args.step_rate or assumed_step_rate()
    results: dict = {"images": args.images, "image": f"{WIDTH}x{HEIGHT} JPEG q{QUALITY}", "step_rate": round(step_rate, 1),
                     "step_rate_source": "--step-rate" if args.step_rate else
                     "assumed: base stage 3, 224 px, one H100 at 45 % MFU (bf16 989 TFLOPS), analytic FLOPs"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tsv, samples = make_images(root / "src", args.images)
        results["mean_jpeg_kb"] = round(float(np.mean([len(d) for d, _ in samples])) / 1024, 1)
        from vlmo_cli.data.tokenizer import train_tokenizer

        tokenizer = train_tokenizer([c for _, c in samples], vocab_size=200, method="words").save(root / "tok")
        prepare(FilePairsSource(tsv, "tsv"), root / "prepared", PrepareOptions(workers=1, tokenizer=tokenizer))
        try:
            shards = write_shards(root / "shards", samples)
        except ImportError:
            shards = None
            results["shards"] = "skipped: the webdataset package is not installed"
        if args.max_size:
            prepare(FilePairsSource(tsv, "tsv"), root / "resized",
                    PrepareOptions(workers=1, tokenizer=tokenizer, max_size=args.max_size))
        results["decoders"] = decoders(samples)
        for w in workers:
            results[f"prepared_w{w}"] = round(rate(prepared_loader(root / "prepared", tokenizer, w), args.batches), 1)
            if shards:
                results[f"shards_w{w}"] = round(rate(shard_loader(shards, w), args.batches), 1)
            if args.max_size:
                results[f"prepared_max{args.max_size}_w{w}"] = round(
                    rate(prepared_loader(root / "resized", tokenizer, w), args.batches), 1)
        for key in [k for k in results if k.startswith(("prepared_", "shards_w"))]:
            results[f"{key}_x_step"] = round(results[key] / step_rate, 3)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
