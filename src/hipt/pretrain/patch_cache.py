"""Optional uint8 cache of every tissue patch (one ``.npy`` memmap) for repeated DINO epochs."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from hipt.errors import HiptError
from hipt.io import atomic_output, atomic_write_json
from hipt.slides.geometry import SlideGeometry, open_slide_at
from hipt.slides.pixels import RESIZE, read_patch

log = logging.getLogger(__name__)

ARRAY = "patches.npy"
INDEX = "index.json"
KEY_COLUMNS = ["slide", "x", "y"]


def cache_key(patches: pd.DataFrame, geometries: list[SlideGeometry]) -> str:
    """sha256 of where and how every patch is read (a cache serves exactly one patch list)."""
    h = hashlib.sha256(json.dumps([g.to_dict() for g in geometries], sort_keys=True).encode())
    h.update(RESIZE.encode())
    h.update(patches[KEY_COLUMNS].to_csv(index=False).encode())
    return h.hexdigest()


def _matches(folder: Path, key: str) -> bool:
    try:
        return (
            json.loads((folder / INDEX).read_text()).get("key") == key
            and (folder / ARRAY).is_file()
        )
    except (OSError, ValueError):
        return False


def build_patch_cache(
    folder: str | Path,
    patches: pd.DataFrame,
    geometries: list[SlideGeometry],
    backend: str = "auto",
) -> Path:
    """Write ``folder/patches.npy`` (``[N, P, P, 3]`` uint8) unless it already holds ``patches``.

    Args:
        folder: cache folder.
        patches: :func:`hipt.pretrain.datamodules.tissue_patches` rows (one patch size).
        geometries: the slides' geometries (``patches.slide`` indexes them).
        backend: slide reader backend.

    Returns:
        The array path.
    """
    folder = Path(folder)
    key = cache_key(patches, geometries)
    if _matches(folder, key):
        log.info("patch cache %s is up to date (%d patches)", folder, len(patches))
        return folder / ARRAY
    sizes = sorted({geometries[s].patch_px for s in np.unique(patches["slide"])})
    if len(sizes) != 1:
        raise HiptError(f"patch cache needs one patch size, the regions have {sizes}")
    p = int(sizes[0])
    folder.mkdir(parents=True, exist_ok=True)
    log.info(
        "building patch cache %s: %d patches of %d px (%.1f GB)",
        folder,
        len(patches),
        p,
        len(patches) * p * p * 3 / 1e9,
    )
    with atomic_output(folder / ARRAY) as tmp:
        arr = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(patches), p, p, 3)
        )
        for s, rows in patches.groupby("slide", sort=False):
            geometry = geometries[int(s)]
            with open_slide_at(geometry, backend=backend) as reader:
                for i, r in zip(rows.index, rows.itertuples(index=False), strict=True):
                    arr[i] = read_patch(reader, geometry, r.x, r.y)
        arr.flush()
        del arr
    atomic_write_json(folder / INDEX, {"key": key, "n": len(patches), "patch_px": p})
    return folder / ARRAY


def open_patch_cache(folder: str | Path) -> np.ndarray:
    """Read-only memmap ``[N, P, P, 3]`` of a built cache."""
    path = Path(folder) / ARRAY
    if not path.is_file():
        raise HiptError(f"{path}: no patch cache; it is built by the pretrain stage's prepare_data")
    return np.load(path, mmap_mode="r")
