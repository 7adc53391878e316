"""Region and patch pixels at the target resolution: the pipeline's one read-resize-cut path.

Extraction, pretraining and heatmaps all read regions (or patches) through these functions, so
the pixels an encoder saw during extraction are bit for bit the pixels a heatmap shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from hipt.slides.geometry import SlideGeometry
from hipt.slides.readers import SlideReader

if TYPE_CHECKING:  # torch loads lazily: tiling does not need it
    import torch
    from torch import Tensor

#: How regions whose read size differs from ``region_px`` are resampled (recorded in stores).
RESIZE = "bilinear-antialias"


def resize_region(region: Tensor, size: int) -> Tensor:
    """Resize a uint8 ``[3, H, W]`` image to ``[3, size, size]`` (antialiased bilinear).

    The one resampling of the pipeline (e.g. 40x slides read at 8192 level-0 px, or a 0.499
    µm/px slide read at 4104 px): triangle filter widened by the scale factor when shrinking
    (PIL's ``BILINEAR``), computed in float32 and rounded half-to-even back to uint8.
    """
    import torch
    import torch.nn.functional as F

    if region.shape[-2:] == (size, size):
        return region
    x = region.unsqueeze(0).float()
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8).squeeze(0)


def unfold_patches(region: Tensor, patch_px: int) -> Tensor:
    """Cut ``[3, S, S]`` into ``[g*g, 3, P, P]`` (``g = S / P``); patch ``n`` is row ``n // g``."""
    c, h, w = region.shape
    g = h // patch_px
    tiles = region.reshape(c, g, patch_px, g, patch_px).permute(1, 3, 0, 2, 4)
    return tiles.reshape(g * g, c, patch_px, patch_px)


def split_patches(region: np.ndarray, patch_px: int) -> np.ndarray:
    """``[S, S, 3]`` region -> ``[g*g, P, P, 3]`` patches in row-major order (a view).

    The numpy (channels-last) twin of :func:`unfold_patches`.
    """
    s = region.shape[0]
    if region.shape[:2] != (s, s) or s % patch_px:
        raise ValueError(f"expected a square region of whole {patch_px}-px patches, got "
                         f"{region.shape}")  # fmt: skip
    g = s // patch_px
    # dims: patch row, pixel row, patch col, pixel col, channel -> (patch row, patch col), ...
    blocks = region.reshape(g, patch_px, g, patch_px, 3).transpose(0, 2, 1, 3, 4)
    return blocks.reshape(g * g, patch_px, patch_px, 3)


def read_region(
    reader: SlideReader,
    geometry: SlideGeometry,
    x: int,
    y: int,
    device: str | torch.device = "cpu",
) -> Tensor:
    """The region at level-0 ``(x, y)`` as uint8 ``[3, region_px, region_px]`` on ``device``.

    Read at the geometry's level and size (outside the slide is white, the readers' contract),
    then resized with :func:`resize_region`.
    """
    import torch

    s, level = geometry.read_size, geometry.read_level
    if torch.device(device).type == "cpu":
        img = torch.from_numpy(reader.read_region(int(x), int(y), level, s, s)).permute(2, 0, 1)
    else:
        img = reader.read_region_tensor(int(x), int(y), level, s, s, device=device)
    return resize_region(img, geometry.region_px)


def read_regions(
    reader: SlideReader,
    geometry: SlideGeometry,
    coords: list[tuple[int, int]],
    device: str | torch.device,
    num_workers: int = 2,
    batch_size: int = 4,
) -> Iterator[Tensor]:
    """:func:`read_region` of many regions on ``device``, in order.

    Decoded in GPU batches where the reader can
    (:meth:`~hipt.slides.readers.SlideReader.read_regions_tensor`).
    """
    s, level = geometry.read_size, geometry.read_level
    for img in reader.read_regions_tensor(coords, level, s, s, device, num_workers, batch_size):
        yield resize_region(img, geometry.region_px)


def read_region_hwc(reader: SlideReader, geometry: SlideGeometry, x: int, y: int) -> np.ndarray:
    """:func:`read_region` as a uint8 ``[region_px, region_px, 3]`` numpy array (CPU)."""
    return read_region(reader, geometry, x, y).permute(1, 2, 0).contiguous().numpy()


def read_patch(reader: SlideReader, geometry: SlideGeometry, x: int, y: int) -> np.ndarray:
    """One patch at level-0 ``(x, y)`` as uint8 ``[patch_px, patch_px, 3]``.

    Reads ``patch_read_px`` at the geometry's level and resizes it like regions are resized.
    """
    import torch

    s = geometry.patch_read_px
    img = reader.read_region(int(x), int(y), geometry.read_level, s, s)
    if s == geometry.patch_px:
        return img
    chw = resize_region(torch.from_numpy(img).permute(2, 0, 1), geometry.patch_px)
    return chw.permute(1, 2, 0).contiguous().numpy()
