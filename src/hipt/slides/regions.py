"""Region <-> patch indexing (row-major grid of 256-px patches) and the regions table format."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hipt.slides.geometry import SlideGeometry
from hipt.slides.tiling import RegionSelection

#: Key of the JSON blob in the parquet schema metadata (per-slide files and regions.parquet).
META_KEY = b"hipt"
#: Patches per region side in HIPT (4096-px regions of 256-px patches); feature stores and the
#: ViT-4K hold 16 x 16 grids.
GRID = 16

REGION_SCHEMA = pa.schema(
    [
        ("slide_id", pa.string()),
        ("region", pa.int32()),  # index among the slide's kept regions, 0..R-1
        ("grid_index", pa.int32()),  # index in the full row-major region grid
        ("x", pa.int64()),  # level-0 top-left
        ("y", pa.int64()),
        ("read_level", pa.int16()),
        ("read_size", pa.int32()),  # square side to read at read_level, in level pixels
        ("read_downsample", pa.float64()),  # level-0 pixels per read_level pixel
        ("region_px", pa.int32()),  # side after resizing, at target_mpp
        ("patch_px", pa.int32()),
        ("target_mpp", pa.float64()),
        ("slide_mpp", pa.float64()),  # level-0 µm/px actually used (after any override)
        # aperio | tiff-resolution | dicom | openslide | override | manifest
        ("mpp_source", pa.string()),
        ("slide_width", pa.int64()),  # level-0 size of the slide
        ("slide_height", pa.int64()),
        ("backend", pa.string()),  # reader that tiled it
        ("tissue_fraction", pa.float32()),
        ("n_tissue_patches", pa.int32()),
        ("patch_mask", pa.list_(pa.bool_())),  # grid*grid bools, row-major (index r*grid + c)
        ("slide_path", pa.string()),
        ("roi_sha256", pa.string()),  # sha256 of the annotation file that bounded it, or null
    ]
)


def patch_grid(region_px: int, patch_px: int) -> int:
    """Patches per region side; ``region_px`` must be a multiple of ``patch_px``."""
    if patch_px <= 0 or region_px <= 0 or region_px % patch_px:
        raise ValueError(f"region_px {region_px} is not a positive multiple of patch_px {patch_px}")
    return region_px // patch_px


def patch_index(row: int, col: int, grid: int = GRID) -> int:
    """Row-major index of patch ``(row, col)``: ``row * grid + col``."""
    if not (0 <= row < grid and 0 <= col < grid):
        raise ValueError(f"patch ({row}, {col}) is outside a {grid}x{grid} grid")
    return row * grid + col


def patch_rowcol(index: int, grid: int = GRID) -> tuple[int, int]:
    """Inverse of :func:`patch_index`: ``divmod(index, grid)``."""
    if not 0 <= index < grid * grid:
        raise ValueError(f"patch index {index} is outside [0, {grid * grid})")
    row, col = divmod(index, grid)
    return row, col


def patch_size_l0(mpp: float, target_mpp: float, patch_px: int = 256) -> float:
    """Side of one patch in level-0 pixels (exact): ``patch_px * target_mpp / mpp``."""
    return patch_px * target_mpp / mpp


def patch_origins(
    x: int, y: int, mpp: float, target_mpp: float, patch_px: int = 256, grid: int = GRID
) -> np.ndarray:
    """Level-0 top-left of every patch of the region at ``(x, y)``, in patch-index order.

    Patch ``(r, c)`` starts at ``(x + ceil(c * s), y + ceil(r * s))`` with ``s`` the exact
    patch side in level-0 pixels; rounding up keeps each origin inside its own patch, so
    :func:`patch_at` maps it back to the same index.

    Returns:
        ``[grid * grid, 2]`` int64 array of ``(x, y)``.
    """
    s = patch_size_l0(mpp, target_mpp, patch_px)
    offs = np.ceil(np.arange(grid) * s - 1e-9).astype(np.int64)
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    return np.stack([x + offs[cols], y + offs[rows]], axis=1)


def patch_at(
    px: float,
    py: float,
    x: int,
    y: int,
    mpp: float,
    target_mpp: float,
    patch_px: int = 256,
    grid: int = GRID,
) -> int:
    """Index of the patch of region ``(x, y)`` that holds level-0 point ``(px, py)``.

    Raises:
        ValueError: the point is outside the region.
    """
    s = patch_size_l0(mpp, target_mpp, patch_px)
    col = math.floor((px - x) / s + 1e-6)
    row = math.floor((py - y) / s + 1e-6)
    if not (0 <= row < grid and 0 <= col < grid):
        raise ValueError(f"point ({px}, {py}) is outside the region at ({x}, {y})")
    return row * grid + col


def flatten_mask(mask: np.ndarray) -> list[bool]:
    """A ``[grid, grid]`` bool mask as a row-major list (the parquet ``patch_mask`` value)."""
    return [bool(v) for v in np.asarray(mask, dtype=bool).ravel()]


def unflatten_mask(values: Sequence[bool] | np.ndarray) -> np.ndarray:
    """The ``[grid, grid]`` ``np.bool_`` array of a stored ``patch_mask`` (inverse of flatten)."""
    arr = np.asarray(values, dtype=bool)
    grid = math.isqrt(arr.size)
    if grid * grid != arr.size:
        raise ValueError(f"a patch mask needs a square number of values, got {arr.size}")
    return arr.reshape(grid, grid)


#: Table columns that hold each :class:`SlideGeometry` field (the rest are named alike).
GEOMETRY_COLUMNS = {"path": "slide_path", "mpp": "slide_mpp", "width": "slide_width",
                    "height": "slide_height"}  # fmt: skip


def regions_table(
    geometry: SlideGeometry, selection: RegionSelection, roi_sha256: str | None = None
) -> pa.Table:
    """One slide's kept regions as a table with :data:`REGION_SCHEMA`."""
    n = len(selection.origins)
    masks = selection.patch_masks.reshape(n, -1) if n else np.zeros((0, 0), bool)
    per_slide = {GEOMETRY_COLUMNS.get(k, k): v for k, v in geometry.to_dict().items()}
    data: dict[str, Any] = {
        **{k: [v] * n for k, v in per_slide.items()},
        "region": list(range(n)),
        "grid_index": list(selection.grid_index),
        "x": [int(o[0]) for o in selection.origins],
        "y": [int(o[1]) for o in selection.origins],
        "tissue_fraction": [float(f) for f in selection.tissue_fraction],
        "n_tissue_patches": [int(m.sum()) for m in masks],
        "patch_mask": [flatten_mask(m) for m in masks],
        "roi_sha256": [roi_sha256] * n,
    }
    return pa.Table.from_pydict(data, schema=REGION_SCHEMA)


def geometry_of(rows: pd.DataFrame) -> SlideGeometry:
    """The :class:`SlideGeometry` of one slide's rows of a regions table.

    Raises:
        ValueError: the rows disagree on a per-slide value, or a column is missing (a table
            written by an older hipt: re-tile).
    """
    values: dict[str, Any] = {}
    for f in dataclasses.fields(SlideGeometry):
        col = GEOMETRY_COLUMNS.get(f.name, f.name)
        if col not in rows.columns:
            raise ValueError(f"no '{col}' column (a table of an older hipt version); re-tile")
        uniq = pd.unique(rows[col])
        if len(uniq) != 1:
            raise ValueError(f"slide rows disagree on {col}: {list(uniq)[:5]}")
        value = uniq[0]
        values[f.name] = value.item() if hasattr(value, "item") else value
    return SlideGeometry.from_dict(values)


def with_metadata(table: pa.Table, meta: dict[str, Any]) -> pa.Table:
    """``table`` carrying ``meta`` as JSON under :data:`META_KEY` in its schema metadata."""
    return table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True, default=str)})


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a regions parquet file (``{}`` if it has none)."""
    meta = pq.read_schema(path).metadata or {}
    blob = meta.get(META_KEY)
    return json.loads(blob) if blob else {}


def read_regions(path: str | Path) -> pd.DataFrame:
    """Load ``regions.parquet`` (or a per-slide file); ``patch_mask`` becomes ``np.bool_`` arrays.

    Returns:
        One row per region, with ``patch_mask`` values of shape ``[grid, grid]``.
    """
    df = pq.read_table(path).to_pandas()
    df["patch_mask"] = [unflatten_mask(v) for v in df["patch_mask"]]
    return df


def patch_masks(df: pd.DataFrame) -> np.ndarray:
    """Stack the ``patch_mask`` column of :func:`read_regions` into ``[R, grid, grid]`` bool."""
    if len(df) == 0:
        return np.zeros((0, GRID, GRID), dtype=bool)
    return np.stack([np.asarray(m, dtype=bool) for m in df["patch_mask"]])
