"""Fixtures of the DINO tests: a regions table of the real sample slide and tiny feature stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from stores import store_meta

from hipt.features import write_store
from hipt.samples import sample_slide_path
from hipt.slides import open_slide
from hipt.slides.geometry import SlideGeometry
from hipt.slides.regions import regions_table, with_metadata
from hipt.slides.tiling import choose_level, select_regions
from hipt.slides.tissue import segment_tissue

TINY_DIM_256 = 32  # width of vit256_tiny_test features = vit4k_tiny_test input_dim


def write_regions(out: Path, target_mpp: float = 0.5) -> Path:
    """``out/regions.parquet`` for the sample slide, built with the tiling stage's own functions."""
    slide = sample_slide_path()
    with open_slide(slide) as reader:
        width, height = reader.level_dimensions[0]
        thumb, ds = reader.thumbnail(1024)
        mask = segment_tissue(thumb, ds, reader.mpp)
        choice = choose_level(reader.level_downsamples, reader.mpp, target_mpp)
        sel = select_regions(mask, width, height, reader.mpp, target_mpp)
        geom = SlideGeometry(
            slide_id="cmu_small_region", path=str(slide), backend=reader.backend, width=width,
            height=height, mpp=reader.mpp, mpp_source=reader.mpp_source,
            read_level=choice.level, read_size=choice.read_size(4096),
            read_downsample=float(reader.level_downsamples[choice.level]),
            target_mpp=target_mpp, region_px=4096, patch_px=256,
        )  # fmt: skip
        table = regions_table(geom, sel)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "regions.parquet"
    pq.write_table(with_metadata(table, {"stage": "tile", "config_hash": "fixture"}), path)
    return path


def write_tiny_stores(out: Path, n_stores: int = 3, regions: int = 8, seed: int = 0) -> Path:
    """``n_stores`` float32 stores of random ``[regions, 256, 32]`` feats with all-tissue masks."""
    rng = np.random.default_rng(seed)
    for s in range(n_stores):
        meta = store_meta(f"s{s}", feature_dim_256=TINY_DIM_256, tiling_config_hash="fixture")
        feats = rng.normal(size=(regions, 256, TINY_DIM_256)).astype(np.float32)
        mask = np.ones((regions, 256), dtype=bool)
        mask[0, :] = False  # one empty region per store: skipped by min_tissue_patches=1
        write_store(
            out / f"s{s}.zarr",
            meta,
            feats,
            rng.normal(size=(regions, 16)),
            rng.integers(0, 10**5, size=(regions, 2)),
            mask,
        )
    return out


@pytest.fixture(scope="session")
def tiles_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tile-stage-like output folder (regions.parquet) of the real sample slide."""
    out = tmp_path_factory.mktemp("tiles")
    write_regions(out)
    return out


@pytest.fixture(scope="session")
def stores_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of 3 tiny feature stores (21 tissue regions)."""
    return write_tiny_stores(tmp_path_factory.mktemp("stores"))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from 2 intra-op threads, and on a busy shared CPU two spinning
    OpenMP threads make each step tens of times slower; restore the setting afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_stores():
    """The tiny-store writer, for tests that need their own stores."""
    return write_tiny_stores
