"""Thumbnail-sized canvases at a chosen µm/px: level-0 -> canvas transforms and region painting.

Rounding rule (the one the alignment tests check): canvas pixel ``(r, c)`` has its centre at
level-0 ``((c + 0.5) / s, (r + 0.5) / s)`` with ``s = slide_mpp / canvas_mpp`` canvas px per
level-0 px, and it shows the map cell whose level-0 square holds that centre (half-open,
``[start, end)``). Nothing else is rounded, so a map never drifts across a large slide.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CanvasGeometry:
    """Where a slide lands on the canvas.

    Attributes:
        slide_w: level-0 width in pixels.
        slide_h: level-0 height in pixels.
        slide_mpp: level-0 µm/px.
        canvas_mpp: µm per canvas pixel.
    """

    slide_w: int
    slide_h: int
    slide_mpp: float
    canvas_mpp: float

    @property
    def scale(self) -> float:
        """Canvas pixels per level-0 pixel."""
        return self.slide_mpp / self.canvas_mpp

    @property
    def width(self) -> int:
        """Canvas width in pixels."""
        return max(1, round(self.slide_w * self.scale))

    @property
    def height(self) -> int:
        """Canvas height in pixels."""
        return max(1, round(self.slide_h * self.scale))

    def to_canvas(self, x0: float, y0: float) -> tuple[float, float]:
        """Level-0 point -> canvas coordinates (continuous, pixel edges at integers)."""
        return x0 * self.scale, y0 * self.scale

    def span(self, start_l0: float, end_l0: float, limit: int) -> tuple[int, int]:
        """Canvas pixels ``[p0, p1)`` whose centres lie in level-0 ``[start_l0, end_l0)``."""
        p0 = math.ceil(start_l0 * self.scale - 0.5 - 1e-9)
        p1 = math.ceil(end_l0 * self.scale - 0.5 - 1e-9)
        return max(0, p0), min(limit, max(p1, 0))

    def cells(self, p0: int, p1: int, start_l0: float, side_l0: float, n: int) -> np.ndarray:
        """Index (``0..n-1``) of the cell under each canvas pixel centre ``p0..p1-1``.

        The square ``[start_l0, start_l0 + side_l0)`` is split into ``n`` equal cells.
        """
        centres = (np.arange(p0, p1, dtype=np.float64) + 0.5) / self.scale
        idx = np.floor((centres - start_l0) / (side_l0 / n) + 1e-9).astype(np.int64)
        return np.clip(idx, 0, n - 1)

    def region_box(self, x0: float, y0: float, side_l0: float) -> tuple[int, int, int, int]:
        """``(c0, r0, c1, r1)`` canvas pixels covered by a square region (by pixel centres)."""
        c0, c1 = self.span(x0, x0 + side_l0, self.width)
        r0, r1 = self.span(y0, y0 + side_l0, self.height)
        return c0, r0, c1, r1


def choose_canvas_mpp(
    slide_w: int, slide_h: int, slide_mpp: float, canvas_mpp: float, min_side: int
) -> float:
    """The canvas µm/px actually used.

    ``canvas_mpp`` unless the longest side would then be shorter than ``min_side`` pixels (a
    small slide): then finer, down to the slide's own resolution (never finer than level 0).
    """
    longest_um = max(slide_w, slide_h) * slide_mpp
    mpp = canvas_mpp
    if min_side > 0 and longest_um / mpp < min_side:
        mpp = longest_um / min_side
    if mpp < slide_mpp:
        log.info("canvas_mpp %.3f is finer than the slide (%.3f µm/px); using the slide's",
                 mpp, slide_mpp)  # fmt: skip
        mpp = slide_mpp
    return float(mpp)


def _pool(cells: np.ndarray, factor: int) -> np.ndarray:
    """NaN-aware mean over ``factor x factor`` blocks of the last two axes (NaN if all NaN)."""
    s = cells.shape[-1] // factor
    blocks = cells[..., : s * factor, : s * factor].reshape(*cells.shape[:-2], s, factor, s, factor)
    ok = ~np.isnan(blocks)
    total = np.where(ok, blocks, 0.0).sum(axis=(-3, -1))
    count = ok.sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


class CanvasStack:
    """One float16 canvas per map name, memory-mapped in ``folder`` (NaN = nothing drawn).

    The canvases live on disk, so a whole-slide run holds only the current region's maps in
    RAM; at 8 µm/px a 150k px slide at 0.25 µm/px gives 4,700 x 4,700 px (44 MB per map).

    Args:
        geometry: slide -> canvas transform.
        names: map names.
        folder: where the ``<name>.npy`` files are created.
    """

    def __init__(self, geometry: CanvasGeometry, names: list[str], folder: str | Path) -> None:
        self.geometry = geometry
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        shape = (geometry.height, geometry.width)
        self.arrays: dict[str, np.ndarray] = {}
        for name in names:
            arr = open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=np.float16, shape=shape)
            arr[:] = np.nan
            self.arrays[name] = arr

    @property
    def names(self) -> list[str]:
        """Map names in creation order."""
        return list(self.arrays)

    def paint(self, x0: float, y0: float, side_l0: float, maps: dict[str, np.ndarray]) -> None:
        """Draw one region's ``[S, S]`` cell maps (NaN = no value) onto the canvases.

        When a canvas pixel covers several cells the value is the NaN-aware block mean, while
        whether it is drawn at all follows the cell under its centre (the rounding rule above).

        Args:
            x0: level-0 left edge of the region.
            y0: level-0 top edge.
            side_l0: region side in level-0 pixels.
            maps: name -> ``[S, S]`` map on the region's cell grid.
        """
        g = self.geometry
        c0, r0, c1, r1 = g.region_box(x0, y0, side_l0)
        if c1 <= c0 or r1 <= r0:
            return
        for name, cells in maps.items():
            n = cells.shape[-1]
            rows = g.cells(r0, r1, y0, side_l0, n)
            cols = g.cells(c0, c1, x0, side_l0, n)
            values = cells[np.ix_(rows, cols)]
            factor = int(n / max(side_l0 * g.scale, 1e-9))
            if factor >= 2 and n % factor == 0:
                pooled = _pool(cells.astype(np.float64), factor)
                values = np.where(
                    np.isnan(values), np.nan, pooled[np.ix_(rows // factor, cols // factor)]
                )
            self.arrays[name][r0:r1, c0:c1] = values

    def flush(self) -> None:
        """Write the memory maps to disk."""
        for arr in self.arrays.values():
            if isinstance(arr, np.memmap):
                arr.flush()

    def close(self) -> None:
        """Drop the memory maps (the files stay)."""
        self.flush()
        self.arrays.clear()
