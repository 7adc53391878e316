"""Optional uint8 cache of every tissue patch (one ``.npy`` memmap) for repeated DINO epochs."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from hipt.errors import HiptError
from hipt.io import atomic_output, atomic_write_json
from hipt.slides import open_slide

log = logging.getLogger(__name__)

ARRAY = "patches.npy"
INDEX = "index.json"
KEY_COLUMNS = ["slide_path", "x", "y", "level", "read_px", "patch_px"]


def read_patch(reader: Any, x: int, y: int, level: int, read_px: int, patch_px: int) -> np.ndarray:
    """Read ``read_px`` square at ``level`` from level-0 ``(x, y)``; resize to ``patch_px``."""
    img = reader.read_region(int(x), int(y), int(level), int(read_px), int(read_px))
    if read_px != patch_px:
        size = (int(patch_px), int(patch_px))
        img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC))
    return img


def cache_key(patches: pd.DataFrame) -> str:
    """sha256 of where every patch is read from (a cache serves exactly one patch list)."""
    blob = patches[KEY_COLUMNS].to_csv(index=False).encode()
    return hashlib.sha256(blob).hexdigest()


def _matches(folder: Path, key: str) -> bool:
    try:
        return (
            json.loads((folder / INDEX).read_text()).get("key") == key
            and (folder / ARRAY).is_file()
        )
    except (OSError, ValueError):
        return False


def build_patch_cache(folder: str | Path, patches: pd.DataFrame, backend: str = "auto") -> Path:
    """Write ``folder/patches.npy`` (``[N, P, P, 3]`` uint8) unless it already holds ``patches``.

    Args:
        folder: cache folder.
        patches: :func:`hipt.pretrain.datamodules.tissue_patches` rows (one patch size).
        backend: slide reader backend.

    Returns:
        The array path.
    """
    folder = Path(folder)
    key = cache_key(patches)
    if _matches(folder, key):
        log.info("patch cache %s is up to date (%d patches)", folder, len(patches))
        return folder / ARRAY
    sizes = patches.patch_px.unique()
    if len(sizes) != 1:
        raise HiptError(f"patch cache needs one patch size, the regions have {sorted(sizes)}")
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
        for slide_path, rows in patches.groupby("slide_path", sort=False, observed=True):
            with open_slide(slide_path, backend=backend) as reader:
                for i, r in zip(rows.index, rows.itertuples(index=False), strict=True):
                    arr[i] = read_patch(reader, r.x, r.y, r.level, r.read_px, p)
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
