"""Attention as objects QuPath imports (File > Import objects): level-0 GeoJSON polygons.

One *annotation* per 4096-px region and one *detection* per tissue patch, each carrying the
attention of every level as QuPath measurements, plus the tissue outline (the union of the
tissue patches the models saw). Coordinates are level-0 pixels, as QuPath expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import box
from shapely.ops import unary_union

from hipt.slides.geometry import SlideGeometry
from hipt.slides.qupath import feature, write_collection

FILE = "attention.geojson"
#: Maps whose values become measurements (those a run draws); percentiles 0-100.
MEASURED = ("slide_attention", "vit4k_mean", "vit256_mean", "factorized_mean")


def patch_means(maps: dict[str, np.ndarray], grid: int) -> dict[str, np.ndarray]:
    """Each map's mean over the tokens of every patch: ``[S, S]`` -> ``[grid * grid]``."""
    out = {}
    for name in MEASURED:
        if name in maps:
            t = maps[name].shape[0] // grid
            # dims: patch row, token row, patch col, token col -> (patch), (tokens)
            cells = maps[name].reshape(grid, t, grid, t).transpose(0, 2, 1, 3).reshape(grid**2, -1)
            valid = ~np.isnan(cells)
            total = np.where(valid, cells, 0.0).sum(axis=1)
            count = valid.sum(axis=1)
            out[name] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


class AttentionObjects:
    """Collects the regions and tissue patches of one slide, then writes the GeoJSON.

    Args:
        geometry: how the slide was read (region and patch sides in level-0 pixels).
    """

    def __init__(self, geometry: SlideGeometry) -> None:
        self.geometry = geometry
        self.regions: list[dict] = []
        self.patches: list[dict] = []
        self._boxes: list[Any] = []

    def add_region(
        self,
        index: int,
        xy: tuple[int, int],
        patch_mask: np.ndarray,
        patch_values: dict[str, np.ndarray],
        region_values: dict[str, float],
    ) -> None:
        """One region: its square, and a square per tissue patch with that patch's values."""
        g = self.geometry
        x, y = xy
        side = g.region_side_l0
        self.regions.append(
            feature(
                box(x, y, x + side, y + side),
                "annotation",
                f"region {index}",
                "Region",
                region_values,
            )
        )
        origins = g.patch_origins(x, y)
        ps = g.patch_side_l0
        for p in np.flatnonzero(np.asarray(patch_mask, bool)):
            ox, oy = (float(v) for v in origins[p])
            square = box(ox, oy, ox + ps, oy + ps)
            self._boxes.append(square)
            values = {k: v[p] for k, v in patch_values.items()}
            self.patches.append(
                feature(
                    square,
                    "detection",
                    f"region {index} patch {p}",
                    "Patch",
                    {**values, "region": index, "patch": int(p)},
                )
            )

    def write(self, folder: Path) -> Path:
        """Write ``folder/attention.geojson`` (tissue outline, regions, patches)."""
        features = []
        if self._boxes:
            outline = unary_union(self._boxes)
            features.append(feature(outline, "annotation", "tissue", "Tissue"))
        return write_collection(folder / FILE, [*features, *self.regions, *self.patches])
