"""End-to-end stores for the real sample slide against independent reads and model calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from extract_utils import extract

from hipt.features import open_store
from hipt.models import bag_to_grid, build, normalize_patches
from hipt.slides.pixels import resize_region
from hipt.slides.regions import patch_masks, read_regions


def _reference_region(slide: Path, x: int, y: int, size: int, region_px: int) -> np.ndarray:
    """Read with OpenSlide directly, white where the slide ends, resized: uint8 [S, S, 3]."""
    import openslide

    with openslide.OpenSlide(str(slide)) as osr:
        rgba = np.asarray(osr.read_region((x, y), 0, (size, size)))
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 255  # outside the slide: white (OpenSlide gives transparent)
    t = torch.from_numpy(rgb).permute(2, 0, 1)
    return resize_region(t, region_px).permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def sample_store(sample_tiles: Path, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints):
    out = tmp_path_factory.mktemp("sample_feats")
    ck = [f"CHECKPOINT256={tiny_checkpoints['256']}", f"CHECKPOINT4K={tiny_checkpoints['4k']}"]
    assert extract(sample_tiles, out / "f32", "dtype=float32", "batch_size=96", *ck) == 0
    assert extract(sample_tiles, out / "f16", *ck) == 0
    return out


def test_sample_store_layout_and_coords(sample_store: Path, sample_tiles: Path, tiny_checkpoints):
    """Shapes follow the spec, coords and masks equal regions.parquet, metadata names the run."""
    df = read_regions(sample_tiles / "regions.parquet")
    from hipt.provenance import sha256_file

    expect = {"feature_dim_256": 32, "feature_dim_4k": 16, "dtype": "float32",
              "checkpoint_256_sha256": sha256_file(tiny_checkpoints["256"]),
              "random_weights": False, "region_px": 4096, "patch_px": 256}  # fmt: skip
    store = open_store(sample_store / "f32" / "cmu_small_region.zarr", expect=expect)
    m = len(df)
    assert store.n_regions == m >= 1
    assert store.feats256().shape == (m, 256, 32)
    assert store.feats4k().shape == (m, 16)
    np.testing.assert_array_equal(store.coords(), df[["x", "y"]].to_numpy())
    np.testing.assert_array_equal(store.patch_mask(), patch_masks(df).reshape(m, 256))
    assert store.meta.tiling_config_hash and store.meta.code_version is not None
    f16 = open_store(sample_store / "f16" / "cmu_small_region.zarr")
    assert f16.group["feats256"].dtype == np.float16
    assert f16.group["feats256"].chunks[0] == 1  # one region per chunk


def test_sample_features_equal_direct_model_call(
    sample_store: Path, sample_tiles: Path, sample_path: Path, tiny_checkpoints
):
    """feats256 = ViT-256 on the region read independently (OpenSlide, numpy slicing), and
    feats4k = ViT-4K on the stored grid; batches of 96 patches straddle region boundaries."""
    df = read_regions(sample_tiles / "regions.parquet")
    row = df.iloc[0]
    assert row.read_size != row.region_px  # the sample (0.499 µm/px) exercises the resize
    v256 = build("vit256_tiny_test", checkpoint=tiny_checkpoints["256"]).eval()
    v4k = build("vit4k_tiny_test", checkpoint=tiny_checkpoints["4k"]).eval()
    img = _reference_region(sample_path, int(row.x), int(row.y), int(row.read_size), 4096)
    p = 256
    patches = np.stack([img[r * p : (r + 1) * p, c * p : (c + 1) * p] for r in range(16)
                        for c in range(16)])  # fmt: skip
    with torch.inference_mode():
        ref256 = v256(normalize_patches(patches)).numpy()
        store = open_store(sample_store / "f32" / "cmu_small_region.zarr")
        got256 = store.feats256()
        ref4k = v4k(bag_to_grid(torch.from_numpy(got256))).numpy()
    np.testing.assert_allclose(got256[0], ref256, rtol=0, atol=2e-5)
    np.testing.assert_allclose(store.feats4k(), ref4k, rtol=0, atol=2e-5)


def test_float16_storage_error_is_small(sample_store: Path):
    """float16 stores differ from float32 ones only by half-precision rounding (< 1e-3 rel)."""
    a = open_store(sample_store / "f32" / "cmu_small_region.zarr")
    b = open_store(sample_store / "f16" / "cmu_small_region.zarr")
    for x, y in ((a.feats256(), b.feats256()), (a.feats4k(), b.feats4k())):
        rel = np.abs(x - y).max() / np.abs(x).max()
        assert rel < 1e-3
