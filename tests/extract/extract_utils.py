"""Helpers of the extraction tests: in-process stage runs, tiling, tile corruption, store reads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# Tiny encoders, no W&B files, no bar, reads in-process: every test run is deterministic.
TINY = [
    "model_256=vit256_tiny_test",
    "model_4k=vit4k_tiny_test",
    "wandb.mode=disabled",
    "progress=false",
    "num_workers=0",
]
# Synthetic slides are tiled into 1024-px regions of 64-px patches (still a 16x16 grid) so a
# slide has several regions and the tiny ViT-256 runs on 4x4 tokens: seconds, not minutes.
SMALL_TILING = ["region_px=1024", "patch_px=64", "min_tissue=0.05"]


def extract(tiles: Path, out: Path, *overrides: str) -> int:
    """Run the stage in-process (same code path as the CLI) and return its exit code."""
    from pipelines.extract_features import main

    return main([f"TILES={tiles}", f"OUT={out}", *TINY, *overrides])


def tile(slides: Path, out: Path, *overrides: str) -> Path:
    from pipelines.tile import main

    code = main([f"slides={slides}", f"out={out}", *overrides])
    if code != 0:
        raise RuntimeError(f"tiling {slides} failed with exit code {code}")
    return out


def corrupt_tile_at(path: Path, x: int, y: int) -> None:
    """Zero the first bytes of the level-0 TIFF tile holding level-0 pixel (x, y)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        index = (y // page.tilelength) * math.ceil(page.imagewidth / page.tilewidth)
        index += x // page.tilewidth
        offset = int(page.dataoffsets[index])
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * 64)


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a complete store, as stored (dtype included)."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return {k: np.asarray(group[k][:]) for k in ("feats256", "feats4k", "coords", "patch_mask")}
