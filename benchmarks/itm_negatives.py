"""What the ITM hard negatives of a stage-3 model differ in, on the demo data.

For random batches of the demo's training pairs, the official sampler (one negative image per text, drawn from the
softmax of the model's ITC logits, positive excluded) is run next to uniform draws over the same batch; each drawn
image's scene is compared with the positive's. A demo scene is ``count colour shape position`` (the prepared ``group``
key), so the output says how often a negative shows the same scene (a false negative) and which attributes it differs
in. Used to find why ITM stays at its prior on the demo (README, "Pre-training").

    python benchmarks/itm_negatives.py runs/tiny-pretrain-vl --pairs demo_data/pairs [--batches 30] [--batch 32]
"""

from __future__ import annotations

import argparse
import collections
import random

import torch

from vlmo_cli.data.tokenizer import load_tokenizer
from vlmo_cli.data.transforms import build_transform
from vlmo_cli.factory import load_model
from vlmo_cli.objectives.matching import sample_hard_negatives

ATTRIBUTES = ("count", "colour", "shape", "position")


def main(argv: list[str] | None = None) -> dict[str, collections.Counter]:
    """Print the table; returns ``{sampler: Counter(tuple of differing attributes → negatives)}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="stage-3 run folder or model directory")
    parser.add_argument("--pairs", default="demo_data/pairs", help="the demo's prepared pairs")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from datasets import load_from_disk

    model = load_model(args.model).eval()
    tokenizer = load_tokenizer(f"{args.pairs}/tokenizer")
    rows = load_from_disk(f"{args.pairs}/data")["train"]
    transform = build_transform(model.config.image_size, train=False)
    rng, generator = random.Random(args.seed), torch.Generator().manual_seed(args.seed)
    counts = {"official": collections.Counter(), "uniform": collections.Counter()}
    for _ in range(args.batches):
        batch = rows.select(rng.sample(range(len(rows)), args.batch))
        pixels = torch.stack([transform(row["image"].convert("RGB")) for row in batch])
        text = tokenizer.encode_batch([row["captions"][0] for row in batch], model.config.max_text_len)
        scenes = [row["group"].split() for row in batch]
        with torch.no_grad():
            images = model.contrastive_image(pixels).embedding
            texts = model.contrastive_text(torch.from_numpy(text["input_ids"]),
                                           torch.from_numpy(text["attention_mask"])).embedding
            logits = model.logit_scale.exp() * images @ texts.t()
        for kind, i2t in (("official", logits), ("uniform", torch.zeros_like(logits))):
            drawn = sample_hard_negatives(i2t, i2t.t(), args.batch, generator=generator).image_index
            for row, negative in enumerate(drawn.tolist()):
                differ = tuple(a for a, x, y in zip(ATTRIBUTES, scenes[row], scenes[negative]) if x != y)
                counts[kind][differ] += 1

    print(f"{args.batches} batches of {args.batch} demo training pairs, model {args.model}")
    print("| negatives | same scene | 1 attribute differs | colour differs | count | shape | position |")
    print("|---|---|---|---|---|---|---|")
    for kind, counter in counts.items():
        total = sum(counter.values())

        def share(test) -> str:
            return f"{100 * sum(n for differ, n in counter.items() if test(differ)) / total:.1f} %"

        cells = [share(lambda d: not d), share(lambda d: len(d) == 1)]
        cells += [share(lambda d, a=a: a in d) for a in ("colour", "count", "shape", "position")]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    return counts


if __name__ == "__main__":
    main()
