"""Which examples the ``--examples N`` pictures show: deterministic (no seed, no randomness), spread over the split,
and a mix of right and wrong predictions where the split has both."""

from __future__ import annotations

from collections.abc import Sequence


def spread(count: int, n: int) -> list[int]:
    """``min(n, count)`` positions of ``range(count)`` evenly spread from the first to the last (first only for 1)."""
    n = min(n, count)
    if n <= 0:
        return []
    if n == 1:
        return [0]
    return [round(i * (count - 1) / (n - 1)) for i in range(n)]  # distinct: the step is >= 1


def mixed_picks(right: Sequence[bool], n: int) -> list[int]:
    """Indices (ascending) of ``min(n, len(right))`` examples: half of them (rounded up) among the right ones and
    the rest among the wrong ones, each spread evenly over its group; when one group is too small the other fills
    the remaining places."""
    right_rows = [i for i, ok in enumerate(right) if ok]
    wrong_rows = [i for i, ok in enumerate(right) if not ok]
    n = max(0, min(n, len(right)))
    want_right = min(len(right_rows), (n + 1) // 2)
    want_wrong = min(len(wrong_rows), n - want_right)
    want_right = min(len(right_rows), n - want_wrong)
    chosen = [right_rows[i] for i in spread(len(right_rows), want_right)]
    chosen += [wrong_rows[i] for i in spread(len(wrong_rows), want_wrong)]
    return sorted(chosen)
