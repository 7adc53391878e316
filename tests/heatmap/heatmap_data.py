"""Heatmap test data: a slide with known tissue squares and a matching tiny-model store."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from stores import store_meta

from hipt.features import write_store
from hipt.models import bag_to_grid, build, export_model, normalize_patches
from hipt.provenance import sha256_file
from hipt.slides import open_slide
from hipt.slides.geometry import SlideGeometry
from hipt.slides.synthetic import SyntheticSlide
from hipt.slides.tiling import region_grid

TARGET_MPP = 0.5  # the store's resolution
PATCH_PX = 32  # vit256_tiny_test on 32-px patches: 2 x 2 tokens of 16 px per patch
REGION_PX = 16 * PATCH_PX
ROWS, COLS = 32, 48  # slide size in patches: a 2 x 3 grid of regions

#: Known tissue squares (row0, row1, col0, col1) in patches. Regions (row 0, col 1) and (row 1,
#: col 2) stay empty; the second square straddles two regions.
SQUARES = ((2, 10, 3, 12), (20, 30, 12, 22), (4, 9, 40, 46))


def square_layout() -> np.ndarray:
    """Bool ``[ROWS, COLS]`` tissue layout of :data:`SQUARES`, one cell per patch."""
    layout = np.zeros((ROWS, COLS), dtype=bool)
    for r0, r1, c0, c1 in SQUARES:
        layout[r0:r1, c0:c1] = True
    return layout


def cell_px(mpp: float) -> int:
    """Level-0 side of one patch (a layout cell) on a slide scanned at ``mpp``."""
    return round(PATCH_PX * TARGET_MPP / mpp)


@dataclasses.dataclass
class Setup:
    """A slide, its store and the encoder files that made it."""

    slide: SyntheticSlide
    store: Path
    ckpt256: Path
    ckpt4k: Path
    coords: np.ndarray
    patch_mask: np.ndarray
    mpp: float
    cell: int


def tiny_encoders(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The two tiny encoders (eval mode), seeded."""
    torch.manual_seed(seed)
    return build("vit256_tiny_test").eval(), build("vit4k_tiny_test").eval()


@torch.inference_mode()
def encode_region(vit256: torch.nn.Module, vit4k: torch.nn.Module, region: np.ndarray):
    """ViT-256 CLS per patch (row-major) and ViT-4K CLS of one region (own patch cutting)."""
    g, p = 16, region.shape[0] // 16
    patches = region.reshape(g, p, g, p, 3).swapaxes(1, 2).reshape(g * g, p, p, 3)
    feats = vit256(normalize_patches(patches))
    return feats.numpy(), vit4k(bag_to_grid(feats[None]))[0].numpy()


def build_store(
    slide_path: Path,
    folder: Path,
    coords: np.ndarray,
    patch_mask: np.ndarray,
    region_px: int = REGION_PX,
    target_mpp: float = TARGET_MPP,
    read_level: int = 0,
    read_size: int | None = None,
) -> tuple[Path, Path, Path]:
    """Encode the regions with saved tiny encoders and write ``<folder>/<stem>.zarr``."""
    vit256, vit4k = tiny_encoders()
    ck256 = export_model(vit256, folder / "vit256_tiny")
    ck4k = export_model(vit4k, folder / "vit4k_tiny")
    f256, f4k = [], []
    with open_slide(slide_path) as reader:
        size = read_size or region_px
        geom = SlideGeometry(
            slide_id=slide_path.stem, path=str(slide_path), backend=reader.backend,
            width=reader.level_dimensions[0][0], height=reader.level_dimensions[0][1],
            mpp=reader.mpp, mpp_source=reader.mpp_source, read_level=read_level, read_size=size,
            read_downsample=float(reader.level_downsamples[read_level]), target_mpp=target_mpp,
            region_px=region_px, patch_px=region_px // 16,
        )  # fmt: skip
        for x, y in coords:
            lw, lh = reader.level_dimensions[read_level]  # read what is on the slide, pad white
            ds = reader.level_downsamples[read_level]
            region = np.full((size, size, 3), 255, np.uint8)
            w, h = min(size, lw - int(x // ds)), min(size, lh - int(y // ds))
            region[:h, :w] = reader.read_region(int(x), int(y), read_level, w, h)
            if size != region_px:
                from hipt.slides.pixels import resize_region

                t = torch.from_numpy(np.ascontiguousarray(region)).permute(2, 0, 1)
                region = resize_region(t, region_px).permute(1, 2, 0).numpy()
            a, b = encode_region(vit256, vit4k, region)
            f256.append(a)
            f4k.append(b)
    meta = store_meta(
        slide_path.stem, geom, source_size_bytes=slide_path.stat().st_size,
        checkpoint_256_sha256=sha256_file(ck256), checkpoint_4k_sha256=sha256_file(ck4k),
        random_weights=False,
    )  # fmt: skip
    store = folder / f"{slide_path.stem}.zarr"
    write_store(store, meta, np.stack(f256), np.stack(f4k), coords, patch_mask)
    return store, ck256, ck4k


def regions_from_layout(layout: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth regions (any tissue) and patch masks, straight from the layout."""
    coords, masks = [], []
    cell = cell_px(mpp)
    for x, y in region_grid(COLS * cell, ROWS * cell, mpp, TARGET_MPP, REGION_PX):
        r, c = y // cell, x // cell
        mask = layout[r : r + 16, c : c + 16]
        if mask.any():
            coords.append((x, y))
            masks.append(mask.reshape(-1))
    return np.asarray(coords, np.int64), np.asarray(masks, bool)


def make_square_setup(
    folder: Path, tiles: np.ndarray, mpp: float, levels: tuple[int, ...]
) -> Setup:
    """A slide at ``mpp`` with tissue exactly in :data:`SQUARES`, and its tiny-model store."""
    from hipt.slides.synthetic import make_synthetic_slide
    from hipt.slides.tiling import choose_level

    cell = cell_px(mpp)
    layout = square_layout()
    slide = make_synthetic_slide(
        folder / "squares.tif", COLS * cell, ROWS * cell, mpp, levels=levels, layout=layout,
        cell_px=cell, source=tiles, seed=3,
    )  # fmt: skip
    coords, masks = regions_from_layout(layout, mpp)
    choice = choose_level([float(d) for d in levels], mpp, TARGET_MPP)
    store, ck256, ck4k = build_store(
        slide.path, folder, coords, masks, read_level=choice.level,
        read_size=choice.read_size(REGION_PX),
    )  # fmt: skip
    return Setup(slide, store, ck256, ck4k, coords, masks, mpp, cell)
