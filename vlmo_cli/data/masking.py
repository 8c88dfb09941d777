"""Masking for the two masked-modelling objectives.

:func:`whole_word_mask` reproduces the official MLM masking (HF ``DataCollatorForWholeWordMask`` with
``mlm_probability=0.15``): words (a token and its ``##`` continuations; here: tokens sharing a word
index) are visited in random order and masked whole while they fit in a budget of ``round(0.15 * L)``; masked tokens
become ``[MASK]`` (80 %), a random token (10 %) or stay (10 %); labels are -100 elsewhere.

The official budget quirk is the default (``budget="padded"``): ``L`` is the *padded* length and every ``[PAD]``
position is a candidate "word" that consumes budget before being un-masked, so with 40-token padding a short caption
gets ~6 * real/38 masks on average and often none. ``budget="real"`` counts the real tokens only (``[CLS]``/``[SEP]``
included, as HF does on unpadded text) and never draws padding, so every caption gets its 15 %.

:class:`BlockMaskGenerator` is BEiT's blockwise patch masking for masked-image modelling: rectangles of random area and
aspect ratio are added until ``ratio`` of the patches (40 % by default) is covered.
"""

from __future__ import annotations

import math

import numpy as np
import torch

IGNORE_INDEX = -100


def whole_word_mask(input_ids: torch.Tensor, word_ids: torch.Tensor, *, vocab_size: int, mask_id: int, pad_id: int,
                    special_ids: frozenset[int] | set[int], probability: float = 0.15, budget: str = "padded",
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked inputs and labels for MLM.

    Args:
        input_ids: ``[B, L]`` token ids.
        word_ids: ``[B, L]`` word index per token, -1 for special tokens and padding (``TextTokenizer.encode_batch``).
        vocab_size: random replacements are drawn uniformly from ``[0, vocab_size)`` (HF behaviour).
        mask_id / pad_id / special_ids: ids of ``[MASK]``, ``[PAD]`` and every special token (never predicted).
        probability: masking rate.
        budget: ``"padded"`` (official quirk) or ``"real"`` (see the module docstring).
        generator: torch generator for reproducible masks.

    Returns:
        ``(mlm_input_ids, mlm_labels)``, both ``[B, L]`` int64.
    """
    if budget not in ("padded", "real"):
        raise ValueError(f"budget must be 'padded' or 'real', got {budget!r}")
    ids = input_ids.clone()
    bsz, length = ids.shape
    chosen = torch.zeros_like(ids, dtype=torch.bool)
    words_np = word_ids.cpu().numpy()
    ids_np = input_ids.cpu().numpy()
    specials = np.isin(ids_np, np.fromiter(special_ids, dtype=np.int64))
    for row in range(bsz):
        candidates = _candidates(ids_np[row], words_np[row], specials[row], pad_id, include_pad=budget == "padded")
        n_tokens = length if budget == "padded" else int((ids_np[row] != pad_id).sum())
        to_predict = max(1, int(round(n_tokens * probability)))
        order = torch.randperm(len(candidates), generator=generator).tolist()
        taken = 0
        for index in order:
            group = candidates[index]
            if taken >= to_predict:
                break
            if taken + len(group) > to_predict:
                continue
            chosen[row, group] = True
            taken += len(group)
    never = torch.from_numpy(specials) | (input_ids == pad_id)
    chosen &= ~never
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    replace = torch.bernoulli(torch.full(ids.shape, 0.8), generator=generator).bool() & chosen
    ids[replace] = mask_id
    randomize = torch.bernoulli(torch.full(ids.shape, 0.5), generator=generator).bool() & chosen & ~replace
    ids[randomize] = torch.randint(vocab_size, ids.shape, generator=generator)[randomize]
    return ids, labels


def _candidates(ids: np.ndarray, words: np.ndarray, special: np.ndarray, pad_id: int, include_pad: bool
                ) -> list[list[int]]:
    """Token index groups that are masked together: one group per word; ``[PAD]`` s as single groups (quirk)."""
    groups: list[list[int]] = []
    previous = None
    for pos in range(len(ids)):
        if ids[pos] == pad_id:
            if include_pad:
                groups.append([pos])
            previous = None
            continue
        if special[pos]:
            previous = None
            continue
        word = int(words[pos])
        if word >= 0 and word == previous and groups:
            groups[-1].append(pos)
        else:
            groups.append([pos])
        previous = word if word >= 0 else None
    return groups


class BlockMaskGenerator:
    """BEiT blockwise masking over a ``grid x grid`` patch grid.

    Args:
        grid: patches per side (``image_size // patch_size``).
        ratio: target fraction of masked patches (BEiT masks 75 of 196 = 0.38; 0.4 here).
        min_patches: smallest block area; default scales BEiT's 16-of-196 to the grid (at least 1).
        min_aspect: blocks have aspect ratios in ``[min_aspect, 1/min_aspect]``.
    """

    def __init__(self, grid: int, ratio: float = 0.4, min_patches: int | None = None, min_aspect: float = 0.3) -> None:
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"mask ratio must lie in (0, 1), got {ratio}")
        self.grid = grid
        self.num_mask = max(1, int(round(ratio * grid * grid)))
        self.min_patches = min_patches if min_patches is not None else max(1, round(16 * grid * grid / 196))
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def _block(self, mask: torch.Tensor, budget: int, generator: torch.Generator | None) -> int:
        def uniform(low: float, high: float) -> float:
            return low + (high - low) * torch.rand((), generator=generator).item()

        for _ in range(10):
            area = uniform(self.min_patches, budget)
            aspect = math.exp(uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < h < self.grid and 0 < w < self.grid:
                top = int(torch.randint(self.grid - h + 1, (), generator=generator))
                left = int(torch.randint(self.grid - w + 1, (), generator=generator))
                region = mask[top:top + h, left:left + w]
                new = h * w - int(region.sum())
                if 0 < new <= budget:
                    region.fill_(True)
                    return new
        return 0

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A ``[grid, grid]`` bool mask (True = masked)."""
        mask = torch.zeros(self.grid, self.grid, dtype=torch.bool)
        count = 0
        while count < self.num_mask:
            added = self._block(mask, self.num_mask - count, generator)
            if added == 0:
                break
            count += added
        return mask

    def batch(self, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[size, grid * grid]`` bool masks, flattened in patch (row-major) order."""
        return torch.stack([self(generator).flatten() for _ in range(size)]) if size else torch.zeros(
            0, self.grid * self.grid, dtype=torch.bool)
