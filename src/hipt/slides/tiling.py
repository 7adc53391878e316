"""Pure tiling maths: pyramid level for a target MPP, region grid, tissue fraction per patch."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hipt.slides.tissue import TissueMask

# A level whose MPP exceeds the target by at most this fraction still counts as "fine enough":
# a 20x scan at 0.504 µm/px is read at level 0 and enlarged by 0.8%, not flagged as too coarse.
DEFAULT_MPP_TOL = 0.02
_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class LevelChoice:
    """Where and how to read a region of ``region_px`` target pixels.

    Attributes:
        level: pyramid level to read from.
        level_mpp: microns per pixel of that level.
        scale: level pixels per target pixel, ``target_mpp / level_mpp`` (>= 1 - tol, i.e. a
            downscale, except when the slide is coarser than the target).
        upsampled: True when even level 0 is coarser than the target (beyond ``tol``): the
            region is then enlarged from level 0 and the caller should record a warning.
    """

    level: int
    level_mpp: float
    scale: float
    upsampled: bool

    def read_size(self, region_px: int) -> int:
        """Side of the square to read at ``level`` (level px), later resized to ``region_px``.

        ``read_size * level_mpp == region_px * target_mpp`` up to rounding to whole pixels.
        """
        return max(1, round(region_px * self.scale))


def choose_level(
    level_downsamples: Sequence[float], mpp: float, target_mpp: float, tol: float = DEFAULT_MPP_TOL
) -> LevelChoice:
    """Pick the coarsest pyramid level that is still at least as fine as ``target_mpp``.

    Level ``i`` has MPP ``mpp * level_downsamples[i]``. Among levels with
    ``level_mpp <= target_mpp * (1 + tol)`` the one with the largest MPP is chosen (fewest
    pixels to decode, no information lost); the region is read there at
    ``read_size = round(region_px * target_mpp / level_mpp)`` level pixels and resized to
    ``region_px``. MPP is never rounded to a nominal magnification. When no level qualifies
    (a slide scanned coarser than the target), level 0 is chosen and ``upsampled`` is set.

    Args:
        level_downsamples: level-0 pixels per level pixel for each level (level 0 is 1).
        mpp: level-0 microns per pixel.
        target_mpp: wanted microns per pixel of the output regions.
        tol: relative slack above the target that still counts as fine enough.

    Returns:
        The chosen level and the scale between level and target pixels.
    """
    if mpp <= 0 or target_mpp <= 0:
        raise ValueError(f"mpp and target_mpp must be > 0, got {mpp}, {target_mpp}")
    if not level_downsamples:
        raise ValueError("a slide needs at least one level")
    limit = target_mpp * (1.0 + tol)
    best: int | None = None
    for i, ds in enumerate(level_downsamples):
        lvl_mpp = mpp * float(ds)
        if lvl_mpp <= limit and (best is None or lvl_mpp > mpp * float(level_downsamples[best])):
            best = i
    upsampled = best is None
    if best is None:
        best = min(range(len(level_downsamples)), key=lambda i: float(level_downsamples[i]))
    level_mpp = mpp * float(level_downsamples[best])
    return LevelChoice(
        level=best, level_mpp=level_mpp, scale=target_mpp / level_mpp, upsampled=upsampled
    )


def region_size_l0(mpp: float, target_mpp: float, region_px: int) -> float:
    """Side of a region in level-0 pixels (exact, not rounded): ``region_px * target_mpp / mpp``."""
    return region_px * target_mpp / mpp


def _starts(side: int, step: float) -> list[int]:
    """Region starts ``floor(k * step + 0.5)`` that lie inside ``[0, side)``; at least ``[0]``."""
    # ceil((side - 0.5) / step) in exact arithmetic; the loops absorb floating-point noise.
    n = max(1, math.ceil((side - 0.5) / step))
    while n > 1 and math.floor((n - 1) * step + 0.5) >= side:
        n -= 1
    while math.floor(n * step + 0.5) < side:
        n += 1
    return [math.floor(k * step + 0.5) for k in range(n)]


def grid_shape(
    slide_w: int, slide_h: int, mpp: float, target_mpp: float, region_px: int = 4096
) -> tuple[int, int]:
    """``(rows, cols)`` of the region grid.

    Each is ``ceil((side - 0.5) / step)`` (at least 1) with ``step`` the exact region side in
    level-0 pixels: the number of rounded region starts that fall inside the slide. This is
    ``ceil(side / step)`` except when a last region would overlap the slide by less than half
    a pixel.
    """
    step = region_size_l0(mpp, target_mpp, region_px)
    return len(_starts(slide_h, step)), len(_starts(slide_w, step))


def region_grid(
    slide_w: int, slide_h: int, mpp: float, target_mpp: float, region_px: int = 4096
) -> list[tuple[int, int]]:
    """Level-0 top-left corners of the regions covering a slide, row-major.

    The grid is anchored at ``(0, 0)``; region ``(r, c)`` starts at
    ``(floor(c * s + 0.5), floor(r * s + 0.5))`` with ``s = region_px * target_mpp / mpp``
    (no drift, as ``s`` is not rounded). The last row/column may run past the slide edge; the
    reader pads the outside with white. A slide smaller than one region gives exactly one region.

    Args:
        slide_w: level-0 width in pixels.
        slide_h: level-0 height in pixels.
        mpp: level-0 microns per pixel.
        target_mpp: microns per pixel of the regions.
        region_px: region side in target pixels.

    Returns:
        ``[(x, y), ...]`` in row-major order (``index = row * cols + col``).
    """
    if slide_w <= 0 or slide_h <= 0:
        raise ValueError(f"slide size must be positive, got {slide_w}x{slide_h}")
    step = region_size_l0(mpp, target_mpp, region_px)
    xs, ys = _starts(slide_w, step), _starts(slide_h, step)
    return [(x, y) for y in ys for x in xs]


def _integral(mask: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero first row/column: ``S[i, j] = mask[:i, :j].sum()``."""
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.float64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1)
    return sat


def _integral_at(sat: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Area-weighted tissue sum over ``[0, x) x [0, y)`` for fractional mask coordinates.

    Treating each mask pixel as a uniform unit square makes this exactly the bilinear
    interpolation of the summed-area table; coordinates outside the mask are clamped (no
    tissue beyond the mask).
    """
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    x = np.clip(x, 0.0, w)
    y = np.clip(y, 0.0, h)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 1 if w > 0 else 0)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 1 if h > 0 else 0)
    x1 = np.minimum(x0 + 1, w)
    y1 = np.minimum(y0 + 1, h)
    fx = x - x0
    fy = y - y0
    top = sat[y0, x0] * (1 - fx) + sat[y0, x1] * fx
    bottom = sat[y1, x0] * (1 - fx) + sat[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def patch_fractions(
    mask: TissueMask,
    origins: Sequence[tuple[int, int]],
    region_l0: float,
    grid: int = 16,
) -> np.ndarray:
    """Tissue fraction of every patch of every region, area-weighted on the mask.

    Args:
        mask: tissue mask with its downsample.
        origins: level-0 top-left of each region.
        region_l0: region side in level-0 pixels.
        grid: patches per region side (``region_px // patch_px``).

    Returns:
        ``[R, grid, grid]`` float in ``[0, 1]``; the part of a patch outside the slide counts
        as background, so a half-outside patch of pure tissue has fraction 0.5.
    """
    n = len(origins)
    out = np.zeros((n, grid, grid), dtype=np.float64)
    if n == 0 or mask.mask.size == 0:
        return out
    sat = _integral(mask.mask.astype(bool))
    xy = np.asarray(origins, dtype=np.float64).reshape(n, 2)
    edges = np.arange(grid + 1, dtype=np.float64) * (region_l0 / grid)
    ex = (xy[:, 0:1] + edges[None, :]) / mask.downsample  # [R, grid+1] mask coordinates
    ey = (xy[:, 1:2] + edges[None, :]) / mask.downsample
    gx = np.broadcast_to(ex[:, None, :], (n, grid + 1, grid + 1))
    gy = np.broadcast_to(ey[:, :, None], (n, grid + 1, grid + 1))
    s = _integral_at(sat, gx, gy)
    sums = s[:, 1:, 1:] - s[:, :-1, 1:] - s[:, 1:, :-1] + s[:, :-1, :-1]
    patch_area = (region_l0 / grid / mask.downsample) ** 2
    return np.clip(sums / patch_area, 0.0, 1.0)


@dataclasses.dataclass
class RegionSelection:
    """Regions of one slide with their tissue content.

    Attributes:
        origins: level-0 ``(x, y)`` of every kept region, in grid (row-major) order.
        grid_index: index of each kept region in the full grid.
        tissue_fraction: ``[R]`` tissue fraction of each kept region.
        patch_masks: ``[R, grid, grid]`` bool, patches with at least ``min_patch_tissue``.
        n_candidates: size of the full grid.
    """

    origins: list[tuple[int, int]]
    grid_index: list[int]
    tissue_fraction: np.ndarray
    patch_masks: np.ndarray
    n_candidates: int


def select_regions(
    mask: TissueMask,
    slide_w: int,
    slide_h: int,
    mpp: float,
    target_mpp: float,
    region_px: int = 4096,
    patch_px: int = 256,
    min_tissue: float = 0.01,
    min_patch_tissue: float = 0.25,
    keep: Any = None,
    cov: Any = None,
) -> RegionSelection:
    """Grid the slide, measure tissue, keep regions with enough of it.

    A region is kept when its tissue fraction (mean of its patch fractions, the outside of
    the slide counting as background) is at least ``min_tissue`` and at least one patch
    reaches ``min_patch_tissue``: a region without a single tissue patch is never kept, so
    raising either threshold can only drop regions. With a region of interest ``keep``
    (level-0 shapely geometry), only tissue inside it counts, measured exactly
    (:func:`hipt.slides.roi.roi_patch_fractions`; ``cov``: its pixel coverage, if computed).

    Returns:
        The kept regions with their 16 x 16 (``region_px // patch_px``) patch masks.
    """
    grid = region_px // patch_px
    origins = region_grid(slide_w, slide_h, mpp, target_mpp, region_px)
    side = region_size_l0(mpp, target_mpp, region_px)
    if keep is None:
        fractions = patch_fractions(mask, origins, side, grid)
    else:
        from hipt.slides.roi import roi_patch_fractions  # shapely only when a ROI is used

        fractions = roi_patch_fractions(mask, keep, origins, side, grid, cov)
    region_frac = fractions.mean(axis=(1, 2)) if len(origins) else np.zeros(0)
    # The epsilon makes a threshold of exactly 1.0 accept pure tissue despite float sums.
    masks = fractions >= min_patch_tissue - _EPS
    keep = (region_frac >= min_tissue - _EPS) & masks.any(axis=(1, 2))
    idx = np.flatnonzero(keep)
    return RegionSelection(
        origins=[origins[i] for i in idx],
        grid_index=[int(i) for i in idx],
        tissue_fraction=region_frac[idx],
        patch_masks=masks[idx],
        n_candidates=len(origins),
    )
