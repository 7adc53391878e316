"""QC picture of a tiled slide: thumbnail, tissue outline, kept regions and their tissue patches."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from hipt.io import atomic_write_bytes
from hipt.slides.tissue import TissueMask

QC_MAX_PX = 1024  # longest side of the QC png: enough to judge the mask, small enough for W&B
OUTLINE_RGB = (0, 170, 0)
REGION_RGBA = (20, 60, 255, 255)
PATCH_RGBA = (255, 190, 0, 70)
OUTSIDE_RGBA = (200, 200, 200, 255)
INCLUDE_RGBA = (170, 0, 200, 255)  # region-of-interest polygons
EXCLUDE_RGBA = (230, 0, 0, 255)  # excluded polygons (pen, artefacts)


def _rings(geometry: Any) -> list[np.ndarray]:
    """Exterior and interior rings of the polygons of ``geometry``, as ``[n, 2]`` arrays."""
    rings = []
    for poly in shapely.get_parts(geometry):
        if poly.geom_type != "Polygon" or poly.is_empty:
            continue
        rings.append(np.asarray(poly.exterior.coords))
        rings.extend(np.asarray(r.coords) for r in poly.interiors)
    return rings


def render_qc(
    thumbnail: np.ndarray,
    mask: TissueMask,
    origins: Sequence[tuple[int, int]],
    region_l0: float,
    patch_masks: np.ndarray,
    max_px: int = QC_MAX_PX,
    polygons: Sequence[tuple[Any, tuple[int, int, int, int]]] = (),
) -> Image.Image:
    """Draw the QC picture.

    Args:
        thumbnail: ``[h, w, 3]`` uint8, at ``mask.downsample``.
        mask: the tissue mask (same size as ``thumbnail``).
        origins: level-0 top-left of each kept region.
        region_l0: region side in level-0 pixels.
        patch_masks: ``[R, grid, grid]`` bool tissue patches of the kept regions.
        max_px: longest side of the result.
        polygons: level-0 shapely geometries to outline, each with its RGBA colour
            (annotations: :data:`INCLUDE_RGBA`, :data:`EXCLUDE_RGBA`).

    Returns:
        An RGB image: tissue outlined in green, kept regions in blue with their index, tissue
        patches shaded in amber, annotation polygons outlined in their colours.
    """
    h, w = thumbnail.shape[:2]
    # The canvas also shows the part of border-crossing regions that lies outside the slide
    # (grey), where the reader pads with white.
    ext_w = max([w] + [(x + region_l0) / mask.downsample for x, _ in origins])
    ext_h = max([h] + [(y + region_l0) / mask.downsample for _, y in origins])
    zoom = min(1.0, max_px / max(ext_w, ext_h, 1.0))
    size = (max(1, round(w * zoom)), max(1, round(h * zoom)))
    base = Image.fromarray(np.ascontiguousarray(thumbnail[..., :3], dtype=np.uint8), "RGB")
    base = base.resize(size, Image.Resampling.BILINEAR) if zoom < 1 else base
    small = (
        np.asarray(
            Image.fromarray(mask.mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
        )
        > 0
    )
    outline = small & ~ndi.binary_erosion(small, iterations=1, border_value=0)
    pixels = np.array(base)
    pixels[ndi.binary_dilation(outline)] = OUTLINE_RGB
    canvas = Image.new("RGBA", (round(ext_w * zoom), round(ext_h * zoom)), OUTSIDE_RGBA)
    canvas.paste(Image.fromarray(pixels, "RGB"), (0, 0))
    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    scale = zoom / mask.downsample  # level-0 px -> QC px
    for i, (x, y) in enumerate(origins):
        grid = patch_masks.shape[-1] if patch_masks.size else 1
        step = region_l0 / grid
        if patch_masks.size:
            for r, c in zip(*np.nonzero(patch_masks[i]), strict=True):
                x0, y0 = (x + c * step) * scale, (y + r * step) * scale
                draw.rectangle([x0, y0, x0 + step * scale, y0 + step * scale], fill=PATCH_RGBA)
        box = [x * scale, y * scale, (x + region_l0) * scale, (y + region_l0) * scale]
        draw.rectangle(box, outline=REGION_RGBA, width=2)
        draw.text((box[0] + 4, box[1] + 3), str(i), fill=REGION_RGBA)
    for geometry, rgba in polygons:
        for ring in _rings(geometry):
            draw.line([(float(x) * scale, float(y) * scale) for x, y in ring], fill=rgba, width=3)
    return Image.alpha_composite(canvas, overlay).convert("RGB")


def write_qc(image: Image.Image, path: str | Path) -> Path:
    """Save ``image`` as PNG at ``path`` atomically."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
