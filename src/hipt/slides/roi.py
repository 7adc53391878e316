"""A region of interest applied to a tissue mask, exactly, in level-0 pixels.

The tissue mask is a raster (thumbnail pixel ``(r, c)`` covers level-0
``[c*d, (c+1)*d) x [r*d, (r+1)*d)``); a region of interest is a polygon. Tiling keeps a patch
when the area of *tissue inside the ROI* reaches ``min_patch_tissue`` of the patch. That area is
computed exactly: mask pixels wholly inside the ROI go through the usual integral-image sums,
and for the pixels the ROI's border cuts, shapely intersects the ROI with each pixel-and-patch
rectangle. :func:`mask_geometry` turns a mask back into polygons (the union of its pixel
squares), so exporting a mask and importing it as the ROI keeps exactly the same patches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely

from hipt.slides.tiling import patch_fractions
from hipt.slides.tissue import TissueMask

#: Quadtree block sides (mask pixels) for classifying pixels as inside / outside / on the border.
_BLOCKS = (64, 8, 2, 1)
#: Coverage this close to 0 or 1 is exactly 0 or 1 (float noise of polygons on pixel edges).
_SNAP = 1e-9


def _boxes(r0: np.ndarray, c0: np.ndarray, r1: np.ndarray, c1: np.ndarray, d: float) -> Any:
    """Shapely boxes of mask-pixel spans ``[c0, c1) x [r0, r1)`` in level-0 coordinates."""
    return shapely.box(c0 * d, r0 * d, c1 * d, r1 * d)


@dataclasses.dataclass
class Coverage:
    """How much of every mask pixel lies inside a ROI.

    Attributes:
        values: ``[h, w]`` float64 in ``[0, 1]``; exactly 1 inside and 0 outside (and 0 on
            border pixels outside the ``where`` it was computed for).
        rows: mask rows of the pixels the ROI's border crosses.
        cols: their columns.
        parts: for each of them, the part of the ROI inside that pixel (shapely geometries).
    """

    values: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    parts: np.ndarray


def coverage(
    keep: Any, shape: tuple[int, int], downsample: float, where: np.ndarray | None = None
) -> Coverage:
    """Fraction of every mask pixel's area that lies inside ``keep``.

    Blocks of 64, 8, then 2 pixels are classified first (inside: 1, apart: 0); only the pixels
    of blocks that the border crosses are intersected one by one, each with the part of the ROI
    clipped to its block, so the cost follows the border's length, not the mask's area or the
    number of the ROI's vertices. ``where`` (``[h, w]`` bool) limits that last step to the
    pixels that matter (tissue); the others on the border are left at 0.
    """
    h, w = shape
    values = np.zeros(shape, dtype=np.float64)
    none = np.zeros(0, dtype=np.int64)
    if h == 0 or w == 0 or keep is None or keep.is_empty:
        return Coverage(values, none, none, np.empty(0, dtype=object))
    shapely.prepare(keep)
    size = _BLOCKS[0]
    rows, cols = np.meshgrid(np.arange(0, h, size), np.arange(0, w, size), indexing="ij")
    r0, c0 = rows.ravel(), cols.ravel()
    geoms = np.full(r0.size, keep, dtype=object)
    for i, size in enumerate(_BLOCKS):
        r1, c1 = np.minimum(r0 + size, h), np.minimum(c0 + size, w)
        boxes = _boxes(r0, c0, r1, c1, downsample)
        if size == 1:
            if where is not None:
                live = where[r0, c0]
                r0, c0, geoms, boxes = r0[live], c0[live], geoms[live], boxes[live]
            parts = shapely.intersection(geoms, boxes)
            part = shapely.area(parts) / shapely.area(boxes)
            part[part < _SNAP] = 0.0
            part[part > 1.0 - _SNAP] = 1.0
            values[r0, c0] = part
            return Coverage(values, r0, c0, parts)
        inside = shapely.contains(geoms, boxes)
        for r, c, rr, cc in zip(r0[inside], c0[inside], r1[inside], c1[inside], strict=True):
            values[r:rr, c:cc] = 1.0
        border = ~inside & shapely.intersects(geoms, boxes)
        clipped = shapely.intersection(geoms[border], boxes[border])  # small from here on
        sub = _BLOCKS[i + 1]
        offs = np.arange(0, size, sub)
        dr, dc = np.meshgrid(offs, offs, indexing="ij")
        k = dr.size
        r0 = (r0[border][:, None] + dr.ravel()[None, :]).ravel()
        c0 = (c0[border][:, None] + dc.ravel()[None, :]).ravel()
        geoms = np.repeat(clipped, k)
        ok = (r0 < h) & (c0 < w)
        r0, c0, geoms = r0[ok], c0[ok], geoms[ok]
    return Coverage(values, none, none, np.empty(0, dtype=object))


def restrict_mask(mask: TissueMask, cov: Coverage) -> TissueMask:
    """The tissue mask limited to the ROI, pixel by pixel (a pixel at least half inside counts).

    For the QC picture and the slide's tissue fraction; patch fractions use the exact areas
    (:func:`roi_patch_fractions`), the exported outline the exact polygons.
    """
    return TissueMask(mask=mask.mask & (cov.values >= 0.5), downsample=mask.downsample)


def roi_patch_fractions(
    mask: TissueMask,
    keep: Any,
    origins: Sequence[tuple[int, int]],
    region_l0: float,
    grid: int = 16,
    cov: Coverage | None = None,
) -> np.ndarray:
    """Fraction of every patch that is tissue inside ``keep``, exact up to float rounding.

    Args:
        mask: the tissue mask.
        keep: level-0 ROI geometry (``None``: no restriction).
        origins: level-0 top-left of each region.
        region_l0: region side in level-0 pixels.
        grid: patches per region side.
        cov: :func:`coverage` of ``keep`` on the mask, when already computed.

    Returns:
        ``[R, grid, grid]`` in ``[0, 1]``, as :func:`~hipt.slides.tiling.patch_fractions`.
    """
    if keep is None:
        return patch_fractions(mask, origins, region_l0, grid)
    d = mask.downsample
    tissue = mask.mask.astype(bool)
    cov = coverage(keep, tissue.shape, d, where=tissue) if cov is None else cov
    out = patch_fractions(TissueMask(tissue & (cov.values >= 1.0), d), origins, region_l0, grid)
    part = cov.values[cov.rows, cov.cols]
    cut = tissue[cov.rows, cov.cols] & (part > 0.0) & (part < 1.0)  # tissue pixels the border cuts
    rows, cols, pieces = cov.rows[cut], cov.cols[cut], cov.parts[cut]
    if rows.size == 0 or len(origins) == 0:
        return out
    s = region_l0 / grid
    px0, px1, py0, py1 = cols * d, (cols + 1) * d, rows * d, (rows + 1) * d
    span = math.ceil(d / s) + 1  # patches a pixel can overlap per axis
    for i, (x, y) in enumerate(origins):
        sel = (px1 > x) & (px0 < x + region_l0) & (py1 > y) & (py0 < y + region_l0)
        if not sel.any():
            continue
        ax0, ax1, ay0, ay1, geoms = px0[sel], px1[sel], py0[sel], py1[sel], pieces[sel]
        c_lo = np.clip(np.floor((ax0 - x) / s), 0, grid - 1).astype(np.int64)
        r_lo = np.clip(np.floor((ay0 - y) / s), 0, grid - 1).astype(np.int64)
        for dr in range(span):
            for dc in range(span):
                pr, pc = r_lo + dr, c_lo + dc
                ok = (pr < grid) & (pc < grid)
                bx0 = np.maximum(ax0[ok], x + pc[ok] * s)
                bx1 = np.minimum(ax1[ok], x + (pc[ok] + 1) * s)
                by0 = np.maximum(ay0[ok], y + pr[ok] * s)
                by1 = np.minimum(ay1[ok], y + (pr[ok] + 1) * s)
                live = (bx1 > bx0) & (by1 > by0)
                if not live.any():
                    continue
                rects = shapely.box(bx0[live], by0[live], bx1[live], by1[live])
                # The rectangle lies in its pixel: the ROI's part in that pixel is all it meets.
                areas = shapely.area(shapely.intersection(geoms[ok][live], rects))
                np.add.at(out[i], (pr[ok][live], pc[ok][live]), areas / (s * s))
    return np.clip(out, 0.0, 1.0)


def mask_geometry(mask: TissueMask) -> Any:
    """The mask as level-0 polygons: the union of its pixel squares (row runs merged first)."""
    m = np.asarray(mask.mask, dtype=bool)
    if not m.any():
        return shapely.MultiPolygon()
    padded = np.zeros((m.shape[0], m.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = m
    edges = np.diff(padded, axis=1)
    r_start, c_start = np.nonzero(edges == 1)
    _, c_end = np.nonzero(edges == -1)  # row-major like the starts: run k ends at c_end[k]
    runs = _boxes(r_start, c_start, r_start + 1, c_end, mask.downsample)
    # Tolerance 0 drops only vertices on straight edges: the same area, far smaller files.
    return shapely.simplify(shapely.union_all(runs), 0.0)
