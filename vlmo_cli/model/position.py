"""Position information: the shared relative-position-bias table of base/large, and resizing of position tables.

The official model holds ONE table ``relative_position_bias_table`` of shape ``[rows, heads * layers]`` (columns are
layer-major: layer ``l`` owns columns ``l*H:(l+1)*H``). Its rows are buckets::

    0 .. (2W-1)^2-1            image patch↔patch 2-D offsets (BEiT)
    R-3, R-2, R-1              image CLS→patch, patch→image CLS, image CLS↔CLS      (R = (2W-1)^2 + 3)
    R                          every text query → every image key
    R+1                        every image query → every text key
    R+2 .. R+2+2T-3            text offsets j-i of non-CLS tokens, row = (j-i) + (T-2) + R + 2   (T = 196)
    A-3, A-2, A-1              text CLS→text, text→text CLS, text CLS↔CLS           (A = R + 2T + 2)

The 2T+2 text and cross-modal rows do not depend on the resolution, which is what makes resizing possible.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def num_image_buckets(grid: int) -> int:
    """Rows used by the image part (2-D offsets plus the three image-CLS buckets)."""
    return (2 * grid - 1) ** 2 + 3


def num_table_rows(grid: int, text_len_of_table: int = 196) -> int:
    """Total rows of the shared table for a ``grid``×``grid`` patch grid."""
    return num_image_buckets(grid) + 2 * text_len_of_table + 2


def image_relative_position_index(grid: int) -> torch.Tensor:
    """BEiT index for ``1 + grid²`` image tokens (CLS first): ``[N, N]`` of table rows."""
    coords = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # [P, P, 2] = query - key
    rel[:, :, 0] += grid - 1
    rel[:, :, 1] += grid - 1
    rel[:, :, 0] *= 2 * grid - 1
    n = grid * grid + 1
    r = num_image_buckets(grid)
    index = torch.zeros(n, n, dtype=torch.long)
    index[1:, 1:] = rel.sum(-1)
    index[0, :] = r - 3  # CLS query → patches
    index[:, 0] = r - 2  # patch queries → CLS
    index[0, 0] = r - 1
    return index


def text_relative_position_index(text_len: int, grid: int, text_len_of_table: int = 196) -> torch.Tensor:
    """Index for ``text_len`` text tokens (CLS first), placed after the image rows of the table."""
    if text_len > text_len_of_table:
        raise ValueError(f"text length {text_len} exceeds the table's text length {text_len_of_table}")
    r = num_image_buckets(grid)
    rows = num_table_rows(grid, text_len_of_table)
    pos = torch.arange(text_len - 1)
    offsets = pos[None, :] - pos[:, None]  # [i, j] = j - i
    index = torch.zeros(text_len, text_len, dtype=torch.long)
    index[1:, 1:] = offsets + (text_len_of_table - 2) + r + 2
    index[0, :] = rows - 3
    index[:, 0] = rows - 2
    index[0, 0] = rows - 1
    return index


def pair_relative_position_index(text_len: int, grid: int, text_len_of_table: int = 196) -> torch.Tensor:
    """Index of the fused sequence ``[text, image]``: ``[[text, text→image], [image→text, image]]``."""
    r = num_image_buckets(grid)
    n_img = grid * grid + 1
    text = text_relative_position_index(text_len, grid, text_len_of_table)
    image = image_relative_position_index(grid)
    text_to_image = torch.full((text_len, n_img), r, dtype=torch.long)
    image_to_text = torch.full((n_img, text_len), r + 1, dtype=torch.long)
    return torch.cat([torch.cat([text, text_to_image], 1), torch.cat([image_to_text, image], 1)], 0)


# ---------------------------------------------------------------------- resizing
def _not_a_knot_matrix(x: np.ndarray, x_new: np.ndarray) -> np.ndarray:
    """Linear map ``values at x -> values at x_new`` of the not-a-knot cubic interpolating spline.

    FITPACK's interpolating spline (``s=0``, ``k=3``; what ``interp2d(kind="cubic")`` and ``RectBivariateSpline``
    fit on a grid) puts its interior knots at ``x[2:-2]``, which is exactly the not-a-knot spline. Being linear in
    the data, the 2-D tensor-product fit is ``M @ Z @ M.T``.
    """
    n = len(x)
    h = np.diff(x)
    # unknowns: second derivatives m_0..m_{n-1}; rows express continuity of the first derivative.
    A = np.zeros((n, n))
    B = np.zeros((n, n))  # rhs as a linear function of the data y
    for i in range(1, n - 1):
        A[i, i - 1] = h[i - 1] / 6
        A[i, i] = (h[i - 1] + h[i]) / 3
        A[i, i + 1] = h[i] / 6
        B[i, i - 1] += 1 / h[i - 1]
        B[i, i] += -1 / h[i - 1] - 1 / h[i]
        B[i, i + 1] += 1 / h[i]
    # not-a-knot: the third derivative is continuous at x[1] and x[n-2]
    A[0, 0], A[0, 1], A[0, 2] = h[1], -(h[0] + h[1]), h[0]
    A[-1, -3], A[-1, -2], A[-1, -1] = h[-1], -(h[-2] + h[-1]), h[-2]
    M2 = np.linalg.solve(A, B)  # second derivatives = M2 @ y
    # FITPACK's evaluator (fpbisp, behind interp2d and RectBivariateSpline) clamps points outside the data range
    # to the boundary instead of extrapolating the cubic; the geometric source grid often ends just short of the
    # target offsets (by the bisection tolerance, or by whole units for small grids), so clamp the same way.
    x_new = np.clip(x_new, x[0], x[-1])
    out = np.zeros((len(x_new), n))
    seg = np.clip(np.searchsorted(x, x_new, side="right") - 1, 0, n - 2)
    for r, (xv, k) in enumerate(zip(x_new, seg)):
        hk = h[k]
        a = (x[k + 1] - xv) / hk
        b = (xv - x[k]) / hk
        out[r, k] += a
        out[r, k + 1] += b
        out[r] += ((a**3 - a) * M2[k] + (b**3 - b) * M2[k + 1]) * hk**2 / 6
    return out


def resize_image_relative_table(table: torch.Tensor, src_grid: int, dst_grid: int) -> torch.Tensor:
    """Resize the image 2-D rows of a relative-position table from ``src_grid`` to ``dst_grid``.

    BEiT's geometric-progression resampling: the source offsets are spread on a geometric grid that
    spans the target's integer offsets, then a bicubic spline is evaluated at the integer offsets. The trailing rows
    (image-CLS, cross-modal and text buckets) are kept unchanged.
    """
    if src_grid == dst_grid:
        return table
    src_size, dst_size = 2 * src_grid - 1, 2 * dst_grid - 1
    if src_size < 4:  # a cubic spline needs 4 nodes per axis (BEiT's interp2d fails the same way)
        from ..errors import ConfigError

        raise ConfigError(
            f"cannot resize the relative-position table of a {src_grid}x{src_grid} patch grid to {dst_grid}x{dst_grid}:"
            " the bicubic resampling needs a grid of at least 3x3 patches"
        )
    grid_rows = table[: src_size**2]
    extra = table[src_size**2 :]

    def geometric_sum(ratio: float, n: int) -> float:
        return (1.0 - ratio**n) / (1.0 - ratio)

    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if geometric_sum(q, src_size // 2) > dst_size // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(src_size // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    src = np.array([-d for d in reversed(dis)] + [0.0] + dis)
    t = dst_size // 2
    dst = np.arange(-t, t + 0.1, 1.0)
    m = torch.from_numpy(_not_a_knot_matrix(src, dst))  # float64
    z = grid_rows.detach().double().T.reshape(-1, src_size, src_size)  # [cols, y, x]
    resized = m @ z @ m.T  # [cols, dst, dst]
    resized = resized.reshape(-1, dst_size * dst_size).T.to(table.dtype)
    return torch.cat([resized, extra.detach()], 0)


def resize_absolute_image_pos_embed(pos_embed: torch.Tensor, dst_grid: int) -> torch.Tensor:
    """Bicubic resize (``align_corners=False``) of ``[1, 1 + g², D]`` image position embeddings; CLS kept."""
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    src_grid = int(math.isqrt(grid.shape[1]))
    if src_grid == dst_grid:
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, src_grid, src_grid, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(dst_grid, dst_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, dst_grid * dst_grid, dim).to(pos_embed.dtype)
    return torch.cat([cls, grid], 1)
