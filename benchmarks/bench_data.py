"""Data throughput: ``prepare`` (images/s with 1 and 2 workers) and the loader (samples/s for the tiny recipe's batch).

Run: ``python benchmarks/bench_data.py [--images 2000] [--size 256]``. Writes synthetic JPEGs to a temporary folder,
prepares them as a TSV ``pairs`` source with and without ``--max-size`` re-encoding, then reads the demo data with the
tiny recipe's settings (32 px, batch 32, MLM + MIM) with 0 and 2 workers. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vlmo_cli.data.demo import make_demo
from vlmo_cli.data.loader import build_dataloader
from vlmo_cli.data.prepare import PrepareOptions, prepare
from vlmo_cli.data.sources import FilePairsSource


def make_images(root: Path, n: int, size: int) -> Path:
    rng = np.random.RandomState(0)
    (root / "imgs").mkdir(parents=True)
    lines = []
    base = rng.randint(0, 255, (size, size, 3), dtype=np.uint8)
    for i in range(n):
        Image.fromarray(np.roll(base, i, axis=1)).save(root / "imgs" / f"{i}.jpg", quality=90)
        lines.append(f"imgs/{i}.jpg\tsynthetic image number {i}\n")
    (root / "pairs.tsv").write_text("".join(lines))
    return root / "pairs.tsv"


def bench_prepare(tsv: Path, out: Path, workers: int, max_size: int | None) -> float:
    start = time.perf_counter()
    manifest = prepare(FilePairsSource(tsv, "tsv"), out, PrepareOptions(workers=workers, max_size=max_size))
    return manifest["counts"]["images"] / (time.perf_counter() - start)


def bench_loader(demo: Path, workers: int, batches: int) -> float:
    loader = build_dataloader(demo / "pairs", "train", "pairs", image_size=32, patch_size=8, batch_size=32,
                              workers=workers, mlm=True, mim=True)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += next(it)["pixel_values"].shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    results: dict[str, float | int] = {"images": args.images, "image_side": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tsv = make_images(root / "src", args.images, args.size)
        for workers in (1, 2):
            results[f"prepare_images_per_s_w{workers}"] = round(bench_prepare(tsv, root / f"o{workers}", workers, None), 1)
            results[f"prepare_resize128_images_per_s_w{workers}"] = round(
                bench_prepare(tsv, root / f"r{workers}", workers, 128), 1)
        start = time.perf_counter()
        make_demo(root / "demo")
        results["demo_prepare_s"] = round(time.perf_counter() - start, 2)
        for workers in (0, 2):
            results[f"loader_samples_per_s_w{workers}"] = round(bench_loader(root / "demo", workers, args.batches), 1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
