"""The tile stage's output read back: one :class:`SlideTiles` (geometry + regions) per slide.

Every stage that reads tiled slides (extraction, pretrain-256, the pipeline runner) loads
``regions.parquet`` through :func:`load_tiles`, so they all see the same per-slide geometry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np

from hipt.errors import HiptError
from hipt.slides.dicom import slide_stat
from hipt.slides.geometry import SlideGeometry
from hipt.slides.regions import GRID, geometry_of, patch_masks, read_metadata, read_regions

log = logging.getLogger(__name__)

REGIONS_FILE = "regions.parquet"


@dataclasses.dataclass
class SlideTiles:
    """The kept regions of one slide, with how to read them.

    Attributes:
        geometry: how the slide is read (MPP and source, read level and size, region/patch px).
        coords: ``[M, 2]`` int64 level-0 top-left (x, y) of each region.
        patch_mask: ``[M, grid*grid]`` bool tissue mask per patch, row-major.
        roi_sha256: sha256 of the annotation file that bounded the regions, else ``None``.
    """

    geometry: SlideGeometry
    coords: np.ndarray
    patch_mask: np.ndarray
    roi_sha256: str | None = None

    def tiling_key(self, tiling_hash: str) -> str:
        """What chose this slide's regions: the tiling settings and its annotation file.

        Equal to ``tiling_hash`` for a slide without annotations, so stores made before
        annotations existed stay valid; editing a slide's annotations changes its key.
        """
        if self.roi_sha256 is None:
            return tiling_hash
        return hashlib.sha256(f"{tiling_hash}:{self.roi_sha256}".encode()).hexdigest()

    @property
    def slide_id(self) -> str:
        """The slide's identifier."""
        return self.geometry.slide_id

    @property
    def path(self) -> str:
        """The slide file."""
        return self.geometry.path

    @property
    def n_regions(self) -> int:
        """Number of regions ``M``."""
        return int(self.coords.shape[0])

    def source_size(self) -> int:
        """Size in bytes of the slide now, all files of a DICOM series (-1 when it is missing)."""
        try:
            return slide_stat(Path(self.path))[0]
        except OSError:
            return -1


@dataclasses.dataclass
class TileSet:
    """Everything a tile-stage folder holds.

    Attributes:
        slides: one entry per slide with regions, in file order.
        tiling_hash: the tile stage's config hash (empty when the file carries none).
        path: the ``regions.parquet`` read.
    """

    slides: list[SlideTiles]
    tiling_hash: str
    path: Path

    def by_id(self) -> dict[str, SlideTiles]:
        """Slides keyed by ``slide_id``."""
        return {s.slide_id: s for s in self.slides}


def regions_file(tiles: str | Path) -> Path:
    """``tiles/regions.parquet`` for a tile-stage folder (or the parquet file itself)."""
    path = Path(tiles)
    return path if path.suffix == ".parquet" else path / REGIONS_FILE


def load_tiles(tiles: str | Path, grid: int | None = GRID) -> TileSet:
    """Read a tile-stage output into one :class:`SlideTiles` per slide.

    Args:
        tiles: the tile stage's output folder (or its ``regions.parquet``).
        grid: patches per region side the caller needs (``None``: any); feature stores hold
            16 x 16 grids.

    Raises:
        HiptError: no ``regions.parquet``, a table of an older version, or another grid.
    """
    path = regions_file(tiles)
    if not path.is_file():
        raise HiptError(f"{path} not found; run `make tile SLIDES=... OUT={path.parent}` first")
    tiling_hash = str(read_metadata(path).get("config_hash", ""))
    if not tiling_hash:
        log.warning("%s carries no tiling config hash; tiling changes cannot be detected", path)
    df = read_regions(path)
    slides = []
    for slide_id, rows in df.groupby("slide_id", sort=False):
        rows = rows.sort_values("region")
        try:
            geometry = geometry_of(rows)
        except ValueError as err:
            raise HiptError(f"{path}: slide {slide_id}: {err}") from None
        if grid is not None and geometry.grid != grid:
            raise HiptError(
                f"{path}: slide {slide_id} has regions of {geometry.region_px} px with "
                f"{geometry.patch_px} px patches, a {geometry.grid}-patch grid; this stage "
                f"needs {grid}x{grid} grids (region_px = {grid} * patch_px)"
            )
        n = len(rows)
        roi = rows["roi_sha256"].iloc[0] if "roi_sha256" in rows.columns else None
        slides.append(
            SlideTiles(
                geometry=geometry,
                coords=rows[["x", "y"]].to_numpy(np.int64),
                patch_mask=patch_masks(rows).reshape(n, geometry.grid**2),
                roi_sha256=str(roi) if isinstance(roi, str) else None,
            )
        )
    return TileSet(slides, tiling_hash, path)
