"""Rewrite a real slide's pixels as a tiled, pyramidal JPEG TIFF (optionally without any MPP)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


def rewrite_pyramid(
    src: Path, dst: Path, levels: tuple[int, ...] = (1, 4), mpp: float | None = None
) -> Path:
    """Level 0 of ``src`` written as a generic tiled TIFF pyramid at ``dst``.

    With ``mpp=None`` no resolution tags are written (ResolutionUnit NONE), as TIFFs exported
    by viewers and converters often are: readers then find no MPP.
    """
    image = tifffile.imread(src, key=0)
    h, w = image.shape[:2]
    with tifffile.TiffWriter(dst) as tif:
        for i, ds in enumerate(levels):
            lw, lh = math.ceil(w / ds), math.ceil(h / ds)
            level = image if ds == 1 else np.asarray(Image.fromarray(image).resize((lw, lh)))
            extra: dict[str, object] = {"resolution": (1, 1), "resolutionunit": "NONE"}
            if mpp is not None:
                extra = {"resolution": (1e4 / (mpp * ds),) * 2, "resolutionunit": "CENTIMETER"}
            tif.write(level, tile=(256, 256), compression="jpeg", photometric="rgb",
                      subfiletype=0 if i == 0 else 1, metadata=None, **extra)  # fmt: skip
    return dst
