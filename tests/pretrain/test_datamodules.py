import math

import numpy as np
import pytest
import torch
import zarr

from hipt.errors import HiptError, StaleOutputError
from hipt.features import open_store
from hipt.pretrain.datamodules import RegionGridDataModule, TilePatchDataset, tissue_patches
from hipt.pretrain.patch_cache import build_patch_cache, open_patch_cache
from hipt.pretrain.sampling import SampleKey
from hipt.slides import open_slide
from hipt.slides.regions import read_regions
from hipt.slides.tiles import load_tiles


def test_tissue_patches_follow_the_masks(tiles_dir):
    """One row per set mask cell, at level-0 origin (x + ceil(c*s), y + ceil(r*s)),
    s = 256 * target_mpp / slide_mpp (closed form), read 256 px at level 0 on the sample."""
    regions = read_regions(tiles_dir / "regions.parquet")
    tiles = load_tiles(tiles_dir)
    patches = tissue_patches(tiles)
    assert len(patches) == sum(int(m.sum()) for m in regions.patch_mask) > 30
    r = regions.iloc[0]
    s = 256 * r.target_mpp / r.slide_mpp
    rows, cols = np.nonzero(r.patch_mask)
    want = {(int(r.x + math.ceil(c * s - 1e-9)), int(r.y + math.ceil(q * s - 1e-9)))
            for q, c in zip(rows, cols, strict=True)}  # fmt: skip
    got = set(zip(patches.x.tolist(), patches.y.tolist(), strict=True))
    assert got == want
    geom = tiles.slides[0].geometry
    assert (geom.patch_read_px, geom.read_level) == (256, 0)


def test_patch_reads_and_cache_agree_with_the_reader(tiles_dir, tmp_path):
    """Dataset reads equal direct SlideReader reads, and the patch cache stores the same bytes."""
    tiles = load_tiles(tiles_dir)
    geoms = [t.geometry for t in tiles.slides]
    patches = tissue_patches(tiles).iloc[:6]
    build_patch_cache(tmp_path / "cache", patches, geoms)
    cache = open_patch_cache(tmp_path / "cache")
    live = TilePatchDataset(patches, geoms, lambda img, seed: [torch.from_numpy(img.copy())])
    cached = TilePatchDataset(patches, geoms, live.transform, cache=tmp_path / "cache")
    with open_slide(geoms[0].path) as reader:
        for i, p in enumerate(patches.itertuples()):
            direct = reader.read_region(p.x, p.y, 0, 256, 256)
            np.testing.assert_array_equal(live.read(i), direct)
            np.testing.assert_array_equal(cache[i], direct)
            assert torch.equal(cached[SampleKey(i, 0)].data[0], torch.from_numpy(direct))
    assert cache.shape == (6, 256, 256, 3)


def test_region_grids_are_row_major_and_checked(stores_dir, tmp_path, make_stores):
    """Grid [D,16,16] of region r has grid[c,i,j] = feats256[r,16i+j,c]; empty regions are
    skipped; a wrong feature width or mixed encoders are refused."""
    dm = RegionGridDataModule(stores_dir, 32, lambda grid, seed: [grid], batch_size=4)
    dm.setup()
    assert len(dm.dataset) == 21 and dm.store_meta["n_stores"] == 3
    s, r = (int(v) for v in dm.dataset.index[5])
    feats = open_store(dm.stores[s]).feats256()[r]
    grid = dm.dataset[SampleKey(5, 0)].data[0]
    i, j, c = 3, 11, 7
    assert grid.shape == (32, 16, 16) and grid[c, i, j] == feats[16 * i + j, c]
    with pytest.raises(StaleOutputError, match="feature_dim_256"):
        RegionGridDataModule(stores_dir, 384, dm.transform, batch_size=4).setup()
    mixed = make_stores(tmp_path / "mixed", n_stores=2)
    zarr.open_group(str(mixed / "s1.zarr"), mode="r+").attrs["checkpoint_256_sha256"] = "f" * 64
    with pytest.raises(HiptError, match="mix ViT-256 encoders"):
        RegionGridDataModule(mixed, 32, dm.transform, batch_size=4).setup()
