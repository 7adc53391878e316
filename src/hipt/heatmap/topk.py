"""Top-k regions and patches: chosen from the store before any pixel is read, cropped in passing."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from hipt.heatmap.config import RenderConfig
from hipt.heatmap.render import crop_panels, save_png
from hipt.heatmap.scores import RegionMaps
from hipt.slides.regions import GRID

#: Maps shown beside each crop (those present in the run).
CROP_MAPS = (
    ("slide_attention", "slide"),
    ("vit4k_mean", "ViT-4K mean"),
    ("vit256_mean", "ViT-256 mean"),
    ("factorized_mean", "factorized"),
)
PATCH_PANEL_PX = 256


@dataclasses.dataclass
class Pick:
    """One top-k item.

    Attributes:
        rank: 1 = most attended.
        region: region index in the store.
        patch: row-major patch index (``None`` for a region pick).
        score: the ranking score.
    """

    rank: int
    region: int
    patch: int | None
    score: float


def top_regions(slide_attention: np.ndarray | None, k: int) -> list[Pick]:
    """The ``k`` regions with the highest slide attention (none without a slide model)."""
    if slide_attention is None or k <= 0:
        return []
    order = np.argsort(-slide_attention, kind="stable")[:k]
    return [Pick(r + 1, int(m), None, float(slide_attention[m])) for r, m in enumerate(order)]


def top_patches(
    attn4k_mean: np.ndarray, patch_mask: np.ndarray, slide_attention: np.ndarray | None, k: int
) -> list[Pick]:
    """The ``k`` tissue patches with the most attention mass.

    The score is ``slide[m] * vit4k[m, p]`` (the share of the slide's attention that reaches
    patch ``p`` through region ``m``) with a slide model, else the ViT-4K weight alone.

    Args:
        attn4k_mean: ``[M, 256]`` head-mean ViT-4K CLS attention.
        patch_mask: ``[M, 256]`` tissue patches.
        slide_attention: ``[M]`` or ``None``.
        k: how many.
    """
    if k <= 0:
        return []
    score = attn4k_mean * (1.0 if slide_attention is None else slide_attention[:, None])
    score = np.where(patch_mask, score, -np.inf).reshape(-1)
    order = np.argsort(-score, kind="stable")[:k]
    order = order[np.isfinite(score[order])]
    return [
        Pick(r + 1, int(i // (GRID * GRID)), int(i % (GRID * GRID)), float(score[i]))
        for r, i in enumerate(order)
    ]


def _panels(maps: RegionMaps, rows: slice, cols: slice) -> list[tuple[np.ndarray, str]]:
    return [(maps.maps[key][rows, cols], label) for key, label in CROP_MAPS if key in maps.maps]


def region_crop(
    folder: Path, pick: Pick, region: np.ndarray, maps: RegionMaps, side: int, cfg: RenderConfig
) -> Path:
    """Write ``topk/region_<rank>.png``: the region beside its maps."""
    everything = slice(None)
    image = crop_panels(region, _panels(maps, everything, everything), side, cfg)
    return save_png(image, folder / f"region_{pick.rank:02d}.png")


def patch_crop(
    folder: Path,
    pick: Pick,
    region: np.ndarray,
    maps: RegionMaps,
    patch_px: int,
    cfg: RenderConfig,
) -> Path:
    """Write ``topk/patch_<rank>.png``: the patch at full resolution beside its maps."""
    if pick.patch is None:
        raise ValueError("patch_crop needs a patch pick")
    row, col = divmod(pick.patch, GRID)
    t = maps.valid.shape[0] // GRID
    pixels = region[row * patch_px : (row + 1) * patch_px, col * patch_px : (col + 1) * patch_px]
    cells = (slice(row * t, (row + 1) * t), slice(col * t, (col + 1) * t))
    side = max(patch_px, PATCH_PANEL_PX)
    image = crop_panels(pixels, _panels(maps, *cells), side, cfg)
    return save_png(image, folder / f"patch_{pick.rank:02d}.png")


def record(
    pick: Pick, file: Path, out: Path, xy: tuple[int, int], side_l0: float
) -> dict[str, Any]:
    """The ``summary.json`` entry of a pick (level-0 box so a viewer can navigate to it)."""
    rec: dict[str, Any] = {
        "rank": pick.rank,
        "region": pick.region,
        "score": pick.score,
        "x": int(xy[0]),
        "y": int(xy[1]),
        "size_level0": round(side_l0, 3),
        "file": str(file.relative_to(out)),
    }
    if pick.patch is not None:
        rec["patch"] = pick.patch
        rec["row"], rec["col"] = divmod(pick.patch, GRID)
    return rec
