"""Image-text matching with global hard negatives (official ``compute_itm_hardneg``).

For every local text one negative image, and for every local image one negative text, are drawn from the softmax of
the plain ITC similarities over the batch gathered from all processes; the exact positive is excluded (optionally
every caption of the same image, every pair whose caption is token-for-token the positive's, and every pair of the
positive's duplicate group, which the official code does not do).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class HardNegatives:
    image_index: torch.Tensor  # [B] index into the gathered pool of the negative image of each local text
    text_index: torch.Tensor  # [B] index into the gathered pool of the negative text of each local image


def sample_hard_negatives(
    logits_i2t: torch.Tensor,
    logits_t2i: torch.Tensor,
    local_batch: int,
    image_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    positives: torch.Tensor | None = None,
    text_keys: torch.Tensor | None = None,
    group_ids: torch.Tensor | None = None,
) -> HardNegatives:
    """Draw one negative per local row from ``softmax(ITC logits)`` with the positive (diagonal) excluded.

    Args:
        logits_i2t, logits_t2i: ITC logits whose first ``local_batch`` rows are this process's pairs and whose
            columns are the gathered pool.
        local_batch: number of local rows B.
        positives: column of each local row's own pair (default ``arange(B)``: the official local-first pool).
        image_ids: gathered image ids; when given, every pair showing the same image is excluded too.
        text_keys: gathered :func:`text_keys` of the pool's captions; when given, every pair whose caption equals the
            positive's is excluded too (as the text of an image, and through its image for a text).
        group_ids: gathered duplicate-group ids (pairs that show the same thing, e.g. one scene or one near-duplicate
            web image, share an id); when given, every pair of the positive's group is excluded too, both ways.
        generator: RNG for the draws.
    """
    with torch.no_grad():
        w_i2t = F.softmax(logits_i2t[:local_batch].float(), dim=1)
        w_t2i = F.softmax(logits_t2i[:local_batch].float(), dim=1)
        exclude = torch.zeros_like(w_i2t, dtype=torch.bool)
        rows = torch.arange(local_batch, device=w_i2t.device)
        cols = rows if positives is None else positives.to(w_i2t.device)
        exclude[rows, cols] = True
        if image_ids is not None:
            exclude |= image_ids[:local_batch, None] == image_ids[None, :]
        if text_keys is not None:
            exclude |= same_rows(text_keys[:local_batch], text_keys)
        if group_ids is not None:
            exclude |= group_ids[:local_batch, None] == group_ids[None, :]
        # a non-finite logit turns its row into NaN: draw that row uniformly instead of failing inside multinomial,
        # so that the step's loss (non-finite from the same logits) stops the run with its own message
        w_i2t = torch.nan_to_num(w_i2t, nan=0.0).masked_fill(exclude, 0)
        w_t2i = torch.nan_to_num(w_t2i, nan=0.0).masked_fill(exclude, 0)
        # rows whose every candidate is excluded (a pool of one image) fall back to uniform over the others
        for w in (w_i2t, w_t2i):
            empty = w.sum(1) <= 0
            if empty.any():
                w[empty] = (~exclude[empty]).float() + (exclude[empty].all(1, keepdim=True)).float()
        image_index = torch.multinomial(w_t2i, 1, generator=generator).squeeze(1)
        text_index = torch.multinomial(w_i2t, 1, generator=generator).squeeze(1)
    return HardNegatives(image_index=image_index, text_index=text_index)


def text_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Token ids with every padding position set to -1: two rows are equal exactly when their trimmed texts are."""
    return input_ids.masked_fill(attention_mask == 0, -1)


def same_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[len(a), len(b)]`` bool: row i of ``a`` equals row j of ``b`` in every column."""
    return (a[:, None, :] == b[None, :, :]).all(-1)


def itm_loss(logits: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CE over ``[positives (B), image negatives (B), text negatives (B)]`` rows; returns ``(loss, accuracy)``."""
    labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long().to(logits.device)
    loss = F.cross_entropy(logits, labels)
    with torch.no_grad():
        acc = (logits.argmax(-1) == labels).float().mean()
    return loss, acc
