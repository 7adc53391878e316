"""Row-major mapping between region bags ``[M, H*W, D]`` and feature grids ``[M, D, H, W]``."""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["bag_to_grid", "grid_to_bag"]


def bag_to_grid(bag: Tensor, grid_hw: tuple[int, int] | None = None) -> Tensor:
    """Arrange the patch features of each region on its spatial grid.

    Patch ``n`` of a region sits at ``row = n // W``, ``col = n % W`` (HIPT's unfold order, so
    ``grid[m, c, i, j] == bag[m, i * W + j, c]``).

    Args:
        bag: ``[M, N, D]`` (``[M, 256, 384]`` for 4096-px regions of 256-px patches).
        grid_hw: ``(H, W)`` with ``H * W == N``; a square grid when omitted.

    Returns:
        ``[M, D, H, W]`` (a view; no copy).
    """
    if bag.ndim != 3:
        raise ValueError(f"expected a [M, N, D] bag, got shape {list(bag.shape)}")
    m, n, d = bag.shape
    if grid_hw is None:
        side = math.isqrt(n)
        grid_hw = (side, side)
    h, w = grid_hw
    if h * w != n:
        raise ValueError(f"a {h}x{w} grid does not hold {n} patches")
    return bag.reshape(m, h, w, d).permute(0, 3, 1, 2)


def grid_to_bag(grid: Tensor) -> Tensor:
    """Inverse of :func:`bag_to_grid`: ``[M, D, H, W] -> [M, H*W, D]`` in row-major order."""
    if grid.ndim != 4:
        raise ValueError(f"expected a [M, D, H, W] grid, got shape {list(grid.shape)}")
    return grid.flatten(2).transpose(1, 2)
