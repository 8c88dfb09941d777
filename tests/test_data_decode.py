"""The JPEG decoders the loader could use: PIL (what ``decode_rgb`` uses) and ``torchvision.io.decode_jpeg`` give the
same pixels for the JPEG kinds found in image-text corpora, so the choice between them is a matter of speed only
(benchmarks/bench_loader.py measures it; README "The data path")."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vlmo_cli.data.images import decode_rgb


def photo(width: int = 160, height: int = 120) -> Image.Image:
    rng = np.random.RandomState(0)
    coarse = Image.fromarray(rng.randint(0, 256, (4, 5, 3)).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(coarse).astype(np.float32) + rng.normal(0, 9, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision are deprecated")
@pytest.mark.parametrize("mode, options", [
    ("RGB", dict(quality=90)),                      # 4:2:0, the common case
    ("RGB", dict(quality=90, subsampling=0)),       # 4:4:4
    ("RGB", dict(quality=90, subsampling=1)),       # 4:2:2
    ("RGB", dict(quality=85, progressive=True)),
    ("L", dict(quality=90)),                        # greyscale
    ("CMYK", dict(quality=90)),
])
def test_decode_jpeg_gives_the_pixels_of_pil(mode, options):
    from torchvision.io import ImageReadMode, decode_jpeg

    buf = io.BytesIO()
    photo(161, 117).convert(mode).save(buf, format="JPEG", **options)  # odd sizes: chroma blocks cut at the edge
    data = buf.getvalue()
    ours = torch.from_numpy(np.array(decode_rgb(data))).permute(2, 0, 1)
    theirs = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    assert torch.equal(ours, theirs)
