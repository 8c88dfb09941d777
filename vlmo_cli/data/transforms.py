"""Image transforms of the official recipes (ALBEF-derived).

- train (``square_transform_randaug``): ``RandomResizedCrop(size, scale=(0.5, 1), bicubic)`` -> optional horizontal
  flip -> :class:`RandomAugment` (N=2, M=7) -> ``ToTensor`` -> ``Normalize(0.5, 0.5)``.
- eval (``square_transform``): ``Resize((size, size), bicubic)`` (aspect not kept, no crop) -> ``ToTensor`` ->
  ``Normalize(0.5, 0.5)``; values end up in [-1, 1].

:class:`RandomAugment` is written here rather than taken from timm because the official operation differs from timm's
RandAugment: the magnitude is fixed (no per-call noise), each of the N sampled operations fires with p=0.5,
brightness/sharpness use one fixed factor (1.8 * M/10 + 0.1 = 1.36) with no sign flip, translations are absolute pixels,
and the fill colour is grey 128. All randomness comes from torch's global generator so that DataLoader worker
seeding makes it reproducible (the official numpy draws repeat across workers).
"""

from __future__ import annotations

from typing import Callable

import torch
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0
FILL = (128, 128, 128)
#: The operation list of the official ``RandomAugment(2, 7, isPIL=True, augs=[...])``.
OFFICIAL_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
                "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def _signed(value: float) -> float:
    return -value if torch.rand(()).item() > 0.5 else value


def _affine(img: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=FILL)


class RandomAugment:
    """The official RandomAugment: ``n`` operations drawn with replacement from ``ops``, each applied with
    probability ``p`` at the fixed magnitude ``m`` (out of 10).

    Magnitudes at m=7: shear 0.21, translate 7 px, rotate 21 degrees (each with a random sign), brightness and
    sharpness factor 1.36.
    """

    def __init__(self, n: int = 2, m: float = 7, ops: tuple[str, ...] = OFFICIAL_OPS, p: float = 0.5,
                 translate_const: float = 10.0) -> None:
        unknown = [op for op in ops if op not in OFFICIAL_OPS]
        if unknown:
            raise ValueError(f"unknown RandomAugment ops {unknown}; allowed: {list(OFFICIAL_OPS)}")
        self.n, self.m, self.ops, self.p = n, m, tuple(ops), p
        level = m / MAX_LEVEL
        self.enhance = level * 1.8 + 0.1
        self.shear = level * 0.3
        self.translate = level * translate_const
        self.rotate = level * 30.0

    def __repr__(self) -> str:
        return f"RandomAugment(n={self.n}, m={self.m}, p={self.p}, ops={list(self.ops)})"

    def apply(self, img: Image.Image, op: str) -> Image.Image:
        """Apply one named operation (random sign included) to an RGB image."""
        if op == "Identity":
            return img
        if op == "AutoContrast":
            return ImageOps.autocontrast(img)
        if op == "Equalize":
            return ImageOps.equalize(img)
        if op == "Brightness":
            return ImageEnhance.Brightness(img).enhance(self.enhance)
        if op == "Sharpness":
            return ImageEnhance.Sharpness(img).enhance(self.enhance)
        if op == "ShearX":
            return _affine(img, (1, _signed(self.shear), 0, 0, 1, 0))
        if op == "ShearY":
            return _affine(img, (1, 0, 0, _signed(self.shear), 1, 0))
        if op == "TranslateX":
            return _affine(img, (1, 0, _signed(self.translate), 0, 1, 0))
        if op == "TranslateY":
            return _affine(img, (1, 0, 0, 0, 1, _signed(self.translate)))
        if op == "Rotate":
            return img.rotate(_signed(self.rotate), resample=Image.BILINEAR, fillcolor=FILL)
        raise ValueError(f"unknown op {op!r}")

    def __call__(self, img: Image.Image) -> Image.Image:
        picks = torch.randint(len(self.ops), (self.n,)).tolist()
        for index in picks:
            if torch.rand(()).item() < self.p:
                img = self.apply(img, self.ops[index])
        return img


def build_transform(image_size: int, train: bool, *, randaug: bool = True, hflip: bool = True,
                    scale: tuple[float, float] = (0.5, 1.0), randaug_n: int = 2, randaug_m: float = 7
                    ) -> Callable[[Image.Image], torch.Tensor]:
    """The train or eval transform: PIL RGB image -> float tensor ``[3, image_size, image_size]`` in [-1, 1].

    Args:
        image_size: output side.
        train: random crop + augmentation; otherwise a square bicubic resize.
        randaug: apply :class:`RandomAugment` (train only).
        hflip: random horizontal flip (train only). The official recipes flip for every task; switch it off for
            data whose text speaks of left and right (VQA, NLVR2, the demo world).
        scale: RandomResizedCrop area range.
    """
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    if not train:
        steps = [T.Resize((image_size, image_size), interpolation=bicubic)]
    else:
        steps = [T.RandomResizedCrop(image_size, scale=scale, interpolation=bicubic)]
        if hflip:
            steps.append(T.RandomHorizontalFlip())
        if randaug:
            steps.append(RandomAugment(randaug_n, randaug_m))
    steps += [T.ToTensor(), T.Normalize(MEAN, STD)]
    return T.Compose(steps)
