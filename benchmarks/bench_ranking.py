"""Time retrieval ranking + recall at COCO 5k test scale (5,000 images x 25,000 captions, D=768) on random data.

    python benchmarks/bench_ranking.py                      # CPU, all threads
    python benchmarks/bench_ranking.py --threads 2 --device cuda --chunk-size 2048

Prints the wall time of :func:`vlmo_cli.evaluate.evaluate_retrieval` (blocked fp32 scores, exact top-K of both
directions, R@1/5/10) next to two references: the bare matmul of the full similarity matrix (the floor any
method pays) and the official recipe (full matrix + ``torch.topk`` on both dims, memory O(N_img x N_txt)).
The last line is a JSON record for scripts.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vlmo_cli.evaluate.retrieval_metrics import build_text_to_image, evaluate_retrieval


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_of(repeat: int, device: torch.device, fn) -> float:
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--candidate-chunk-size", type=int, default=8192)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--repeat", type=int, default=3, help="report the best of this many runs")
    parser.add_argument("--skip-reference", action="store_true", help="skip the full-matrix reference")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    mapping = build_text_to_image([args.captions_per_image] * args.images)
    images = torch.nn.functional.normalize(torch.randn(args.images, args.dim, generator=generator), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(mapping.numel(), args.dim, generator=generator), dim=-1)
    images, texts = images.to(device), texts.to(device)

    result = None

    def ranked() -> None:
        nonlocal result
        result = evaluate_retrieval(
            images, texts, mapping, chunk_size=args.chunk_size, candidate_chunk_size=args.candidate_chunk_size
        )

    seconds = _best_of(args.repeat, device, ranked)
    record = {
        "images": args.images,
        "texts": int(mapping.numel()),
        "dim": args.dim,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "chunk_size": args.chunk_size,
        "candidate_chunk_size": args.candidate_chunk_size,
        "evaluate_retrieval_s": round(seconds, 3),
        "block_bytes": args.chunk_size * min(args.candidate_chunk_size, int(mapping.numel())) * 4,
    }
    if not args.skip_reference:
        record["full_matmul_s"] = round(_best_of(args.repeat, device, lambda: images @ texts.T), 3)

        def official() -> None:
            scores = images @ texts.T
            scores.topk(10, dim=1)
            scores.topk(10, dim=0)

        record["full_matrix_topk_s"] = round(_best_of(args.repeat, device, official), 3)
        record["full_matrix_bytes"] = args.images * int(mapping.numel()) * 4
    assert result is not None
    print(
        f"{args.images} images x {mapping.numel()} texts, D={args.dim}, {device}, "
        f"{torch.get_num_threads()} threads: evaluate_retrieval {seconds:.2f} s (best of {args.repeat}; "
        f"block {record['block_bytes'] / 2**20:.0f} MiB)"
    )
    if "full_matmul_s" in record:
        print(
            f"reference: full matmul {record['full_matmul_s']:.2f} s, full matrix + topk "
            f"{record['full_matrix_topk_s']:.2f} s ({record['full_matrix_bytes'] / 2**20:.0f} MiB matrix)"
        )
    print(f"r_mean on random vectors: {result.metrics['r_mean']:.3f} (chance level)")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
