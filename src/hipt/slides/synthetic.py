"""Synthetic pyramidal slides built from real tissue tiles, and damaged files for error tests."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hipt.io import tmp_path_for

log = logging.getLogger(__name__)

# Level-0 top-left of the tile that write_bad_inputs()["corrupt_tile"] damages.
CORRUPT_TILE_XY = (256, 256)
_BANK_SIZE = 32  # distinct tissue cells per slide (flip/rotation/stain variants)
_NOISE_TILES = 8
_BACKGROUND = 243  # grey level of the glass, as on real scans (not pure 255)


def saturation_unit(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of RGB uint8 ``[..., 3]``: ~0 on glass, high on stained tissue."""
    rgb = rgb.astype(np.float32)
    hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1.0), 0.0)


@functools.lru_cache(maxsize=4)
def _sample_tiles(path: str, tile_px: int, min_tissue: float) -> np.ndarray:
    import tifffile

    image = tifffile.imread(path, key=0)
    tissue = saturation_unit(image) > 0.08
    stride = tile_px // 2
    tiles = []
    for y in range(0, image.shape[0] - tile_px + 1, stride):
        for x in range(0, image.shape[1] - tile_px + 1, stride):
            if tissue[y : y + tile_px, x : x + tile_px].mean() > min_tissue:
                tiles.append(image[y : y + tile_px, x : x + tile_px])
    if not tiles:
        raise ValueError(f"{path}: no {tile_px}-px tile has more than {min_tissue:.0%} tissue")
    stack = np.stack(tiles)
    stack.flags.writeable = False
    return stack


def tissue_tiles_from_sample(
    path: str | Path | None = None, tile_px: int = 256, min_tissue: float = 0.5
) -> np.ndarray:
    """Cut real tissue tiles from a slide's level 0 (default: the sample slide).

    Tiles come from a grid with half-tile stride; a tile is kept when more than ``min_tissue`` of
    its pixels have HSV saturation > 0.08 (stain), which white glass never reaches.

    Args:
        path: a TIFF-based slide; None means :func:`hipt.samples.sample_slide_path`.
        tile_px: tile side in pixels.
        min_tissue: minimum tissue fraction of a kept tile.

    Returns:
        Read-only uint8 ``[N, tile_px, tile_px, 3]`` (cached per process).
    """
    if path is None:
        from hipt.samples import sample_slide_path

        path = sample_slide_path()
    return _sample_tiles(str(path), int(tile_px), float(min_tissue))


def blob_layout(rows: int, cols: int, fraction: float = 0.4, seed: int = 0) -> np.ndarray:
    """A tissue-like boolean layout: smooth random blobs covering ``fraction`` of the cells.

    Returns:
        bool ``[rows, cols]``; exactly ``round(fraction * rows * cols)`` cells are True.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((rows, cols)), sigma=max(rows, cols) / 12)
    n = round(fraction * rows * cols)
    layout = np.zeros(rows * cols, dtype=bool)
    layout[np.argsort(field, axis=None)[::-1][:n]] = True
    return layout.reshape(rows, cols)


@dataclasses.dataclass(frozen=True)
class SyntheticSlide:
    """A written synthetic slide and the ground truth it was built from.

    Args:
        path: the TIFF file.
        shape: level-0 (height, width) in pixels, numpy order.
        mpp: level-0 µm/px written into the file (None when written without MPP).
        levels: downsample factor of each level.
        layout: bool ``[rows, cols]`` (int tile classes with ``sources``); cell (r, c) covers
            level-0 pixels ``[r * cell_px, (r + 1) * cell_px) x [c * cell_px, (c + 1) * cell_px)``.
        cell_px: side of a layout cell in level-0 pixels.
    """

    path: Path
    shape: tuple[int, int]
    mpp: float | None
    levels: tuple[int, ...]
    layout: np.ndarray
    cell_px: int

    @property
    def width(self) -> int:
        """Level-0 width in pixels."""
        return self.shape[1]

    @property
    def height(self) -> int:
        """Level-0 height in pixels."""
        return self.shape[0]

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of every level, as the readers report them."""
        return [(math.ceil(self.width / d), math.ceil(self.height / d)) for d in self.levels]

    def tissue_regions(self, region_px: int) -> list[tuple[int, int]]:
        """Level-0 top-lefts of the ``region_px`` grid squares that contain a tissue cell."""
        out = []
        for y in range(0, self.height, region_px):
            for x in range(0, self.width, region_px):
                r0, c0 = y // self.cell_px, x // self.cell_px
                r1, c1 = -(-(y + region_px) // self.cell_px), -(-(x + region_px) // self.cell_px)
                if self.layout[r0:r1, c0:c1].any():
                    out.append((x, y))
        return out


class _Renderer:
    """Renders any tile of any level directly from the layout (no level is held in memory)."""

    def __init__(
        self,
        layout: np.ndarray,
        cell_px: int,
        sources: list[np.ndarray],
        tile_px: int,
        seed: int,
    ) -> None:
        from PIL import Image

        rng = np.random.default_rng(seed)
        self.cell_px, self.tile_px = cell_px, tile_px
        bank = []
        for tiles in sources:  # _BANK_SIZE cells per tile class, class k at [k * _BANK_SIZE, ...)
            picks = rng.choice(len(tiles), size=_BANK_SIZE, replace=len(tiles) < _BANK_SIZE)
            for i in picks:
                tile = np.rot90(tiles[i], k=int(rng.integers(4)))
                tile = tile[:, ::-1] if rng.random() < 0.5 else tile
                # Stain jitter: scale optical density per channel by a few percent.
                od = -np.log((tile.astype(np.float32) + 1.0) / 256.0) * rng.normal(1.0, 0.05, 3)
                tile = np.clip(256.0 * np.exp(-od) - 1.0, 0, 255).astype(np.uint8)
                cell = Image.fromarray(tile).resize((cell_px, cell_px), Image.Resampling.BICUBIC)
                bank.append(np.asarray(cell))
        self._bank0 = np.stack(bank)
        self._banks: dict[int, np.ndarray] = {}
        tile_class = layout.astype(np.int64) - 1  # bool True -> class 0, 0/False -> glass (-1)
        pick = rng.integers(0, _BANK_SIZE, layout.shape)
        self.variant = np.where(tile_class >= 0, tile_class * _BANK_SIZE + pick, -1)
        noise = rng.normal(_BACKGROUND, 1.5, (_NOISE_TILES, tile_px, tile_px, 1))
        self._noise = np.repeat(np.clip(noise, 0, 255).astype(np.uint8), 3, axis=3)

    def _bank(self, ds: int) -> np.ndarray:
        """Tissue cells area-averaged to their size at downsample ``ds``."""
        if ds not in self._banks:
            from PIL import Image

            side = -(-self.cell_px // ds)  # ceil: a cell's longest run of level pixels
            self._banks[ds] = np.stack(
                [
                    np.asarray(Image.fromarray(c).resize((side, side), Image.Resampling.BOX))
                    for c in self._bank0
                ]
            )
        return self._banks[ds]

    def tile(self, ds: int, level_w: int, level_h: int, tx: int, ty: int) -> np.ndarray:
        """Tile (tx, ty) of the level with downsample ``ds`` and size ``level_w`` x ``level_h``."""
        t = self.tile_px
        out = self._noise[(tx * 7 + ty * 13 + ds) % _NOISE_TILES].copy()
        rows, cols = self.variant.shape
        col_runs = self._runs(tx * t, t, ds, min(level_w, -(-cols * self.cell_px // ds)))
        row_runs = self._runs(ty * t, t, ds, min(level_h, -(-rows * self.cell_px // ds)))
        if not col_runs or not row_runs:
            return out
        bank = self._bank(ds)
        side = bank.shape[1]
        # Copy each (cell row, cell column) block of the tile as one slice of a bank cell.
        for ro0, ro1, ri, v0 in row_runs:
            for ao0, ao1, ci, u0 in col_runs:
                k = self.variant[ri, ci]
                if k >= 0:
                    v1, u1 = min(side, v0 + ro1 - ro0), min(side, u0 + ao1 - ao0)
                    block = bank[k, v0:v1, u0:u1]
                    out[ro0 : ro0 + block.shape[0], ao0 : ao0 + block.shape[1]] = block
        return out

    def _runs(self, start: int, t: int, ds: int, limit: int) -> list[tuple[int, int, int, int]]:
        """Split level pixels [start, start + t) into runs inside one layout cell.

        Returns:
            (first tile px, end tile px, cell index, first px inside the level's bank cell) per
            run, for level pixels below ``limit`` (the rest is background).
        """
        runs = []
        pos = start
        end = min(start + t, limit)
        while pos < end:
            cell = pos * ds // self.cell_px
            run_end = min(end, -(-(cell + 1) * self.cell_px // ds))
            offset = (pos * ds - cell * self.cell_px) // ds
            runs.append((pos - start, run_end - start, cell, offset))
            pos = run_end
        return runs


def make_synthetic_slide(
    path: str | Path,
    width: int,
    height: int,
    mpp: float | None,
    levels: tuple[int, ...] = (1, 4, 16),
    layout: np.ndarray | None = None,
    tile_px: int = 256,
    seed: int = 0,
    jpeg_quality: int = 90,
    source: str | Path | np.ndarray | None = None,
    *,
    cell_px: int | None = None,
    target_mpp: float = 0.5,
    tissue_fraction: float = 0.4,
    flavor: str = "aperio",
    sources: list[np.ndarray] | None = None,
) -> SyntheticSlide:
    """Write a tiled, JPEG-compressed, pyramidal TIFF made of real tissue tiles.

    Tissue is laid out on a grid of ``cell_px``-pixel cells (level 0). By default a cell is one
    256-px tile at ``target_mpp`` (``cell_px = round(256 * target_mpp / mpp)``, 128 µm at 0.5
    µm/px), and each tissue cell shows one real tile from ``source`` (flipped, rotated and
    stain-jittered), resampled to the cell so the tissue has its true physical scale. Background
    cells are glass: grey 243 with slight noise.

    Both cuCIM and OpenSlide open the result as a multi-level slide with the given MPP. Tiles are
    rendered and written one at a time and lower levels are rendered from the layout directly,
    so memory does not depend on the slide size (80k x 80k works).

    Args:
        path: output ``.tif``/``.svs`` path (written through a temporary file, then renamed).
        width: level-0 width in pixels.
        height: level-0 height in pixels.
        mpp: level-0 µm/px; None writes no MPP at all (only with ``flavor="generic"``).
        levels: downsample of each level, starting at 1, increasing.
        layout: bool ``[ceil(height / cell_px), ceil(width / cell_px)]``; None draws
            :func:`blob_layout` covering ``tissue_fraction``. With ``sources``, an integer
            layout instead: 0 is glass and ``k >= 1`` a cell showing a tile of ``sources[k-1]``.
        tile_px: TIFF tile side (multiple of 16).
        seed: seed for layout, tile choice, augmentation and noise.
        jpeg_quality: JPEG quality of the tiles.
        source: slide path or uint8 ``[N, S, S, 3]`` tissue tiles; None uses the sample slide.
        cell_px: layout cell side in level-0 pixels (overrides the default above).
        target_mpp: µm/px at which a cell is 256 px, used for the default ``cell_px``.
        tissue_fraction: tissue share of the default layout.
        flavor: ``"aperio"`` (Aperio ImageDescription with ``MPP``, plus resolution tags) or
            ``"generic"`` (generic tiled TIFF; MPP only in XResolution/ResolutionUnit).
        sources: tile banks (uint8 ``[N, S, S, 3]`` each), one per tile class of an integer
            ``layout`` (e.g. nuclei-dense vs stroma-rich tissue); overrides ``source``.

    Returns:
        The slide's description and ground truth.
    """
    import tifffile

    path = Path(path)
    levels = tuple(int(d) for d in levels)
    if (
        not levels
        or levels[0] != 1
        or any(b <= a for a, b in zip(levels, levels[1:], strict=False))
    ):
        raise ValueError(f"levels must start at 1 and increase, got {levels}")
    if tile_px % 16:
        raise ValueError(f"tile_px must be a multiple of 16 (TIFF), got {tile_px}")
    if flavor not in ("aperio", "generic"):
        raise ValueError(f"flavor must be 'aperio' or 'generic', got {flavor!r}")
    if mpp is None and flavor == "aperio":
        raise ValueError("an Aperio-flavour slide needs an mpp; use flavor='generic' for none")
    if cell_px is None:
        cell_px = max(1, round(256 * target_mpp / (mpp or target_mpp)))
    grid = (math.ceil(height / cell_px), math.ceil(width / cell_px))
    if layout is None:
        layout = blob_layout(*grid, fraction=tissue_fraction, seed=seed)
    if sources is None:
        layout = np.asarray(layout, dtype=bool)
        tiles = source if isinstance(source, np.ndarray) else tissue_tiles_from_sample(source)
        sources = [tiles]
    else:
        layout = np.asarray(layout, dtype=np.int64)
        if layout.min() < 0 or layout.max() > len(sources):
            raise ValueError(f"layout values must be in 0..{len(sources)} (one per source)")
    if layout.shape != grid:
        raise ValueError(f"layout shape {layout.shape} != {grid} (cells of {cell_px} px)")
    renderer = _Renderer(layout, cell_px, list(sources), tile_px, seed)

    tmp = tmp_path_for(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bigtiff = width * height * 3 * 1.4 > 2**32 * 0.9  # uncompressed bound, all levels
    try:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
            for i, ds in enumerate(levels):
                lw, lh = math.ceil(width / ds), math.ceil(height / ds)
                extra: dict[str, Any] = {}
                if mpp is not None:
                    extra = {"resolution": (1e4 / (mpp * ds),) * 2, "resolutionunit": "CENTIMETER"}
                if flavor == "aperio":
                    extra["description"] = _aperio_description(width, height, lw, lh, i, mpp or 0.0)
                tif.write(
                    _tiles(renderer, ds, lw, lh, tile_px),
                    shape=(lh, lw, 3),
                    dtype=np.uint8,
                    tile=(tile_px, tile_px),
                    compression="jpeg",
                    compressionargs={"level": jpeg_quality},
                    photometric="rgb",
                    subfiletype=0 if i == 0 else 1,
                    metadata=None,
                    maxworkers=os.cpu_count() or 1,  # JPEG encoding in threads, rendering here
                    buffersize=32 << 20,  # raw tiles tifffile batches per thread-pool round
                    **extra,
                )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s: %dx%d, levels %s, mpp %s, %d tissue cells of %d px",
             path, width, height, levels, mpp, int((layout > 0).sum()), cell_px)  # fmt: skip
    return SyntheticSlide(path, (height, width), mpp, levels, layout, cell_px)


def _tiles(renderer: _Renderer, ds: int, lw: int, lh: int, tile_px: int) -> Iterator[np.ndarray]:
    for ty in range(math.ceil(lh / tile_px)):
        for tx in range(math.ceil(lw / tile_px)):
            yield renderer.tile(ds, lw, lh, tx, ty)


def _aperio_description(w: int, h: int, lw: int, lh: int, index: int, mpp: float) -> str:
    # The first field names the level; OpenSlide and cuCIM read `MPP` from the level-0 page.
    head = (
        f"{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90" if index == 0 else f"{w}x{h} -> {lw}x{lh}"
    )
    return f"Aperio Image Library v10.0.0 (hipt synthetic)\r\n{head}|AppMag = 20|MPP = {mpp:.4f}"


def write_bad_inputs(folder: str | Path) -> dict[str, Path]:
    """Write small damaged or unsupported files that every reader must reject cleanly.

    Keys: ``zero_bytes``, ``truncated`` (the sample slide cut before its last directories),
    ``random_bytes``, ``png_as_svs``, ``unsupported_ext`` (a valid TIFF named ``.xyz``),
    ``no_mpp`` (a tiled TIFF without any MPP), ``corrupt_tile`` (a valid slide whose tile at
    level-0 :data:`CORRUPT_TILE_XY` has its first bytes zeroed).

    Returns:
        Key -> path, all inside ``folder``.
    """
    import tifffile
    from PIL import Image

    from hipt.samples import sample_slide_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {name: folder / f"{name}.svs" for name in ("zero_bytes", "truncated", "random_bytes")}
    out["zero_bytes"].write_bytes(b"")
    real = sample_slide_path().read_bytes()
    out["truncated"].write_bytes(real[: int(len(real) * 0.8)])
    out["random_bytes"].write_bytes(np.random.default_rng(0).bytes(65_536))
    out["png_as_svs"] = folder / "png_as_svs.svs"
    Image.new("RGB", (64, 64), (220, 120, 160)).save(out["png_as_svs"], format="PNG")
    tiles = tissue_tiles_from_sample()
    small: dict[str, Any] = {"levels": (1,), "source": tiles, "jpeg_quality": 80}
    out["no_mpp"] = make_synthetic_slide(
        folder / "no_mpp.tif", 512, 512, None, flavor="generic", cell_px=256, **small
    ).path
    out["unsupported_ext"] = folder / "unsupported_ext.xyz"
    out["unsupported_ext"].write_bytes(out["no_mpp"].read_bytes())
    corrupt = make_synthetic_slide(folder / "corrupt_tile.svs", 768, 768, 0.5, **small).path
    with tifffile.TiffFile(corrupt) as tif:
        page = tif.pages.first
        x, y = CORRUPT_TILE_XY
        index = (y // page.tilelength) * math.ceil(page.imagewidth / page.tilewidth)
        index += x // page.tilewidth
        offset = int(page.dataoffsets[index])
    with open(corrupt, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * 64)
    out["corrupt_tile"] = corrupt
    return out
