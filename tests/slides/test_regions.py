"""Region <-> patch indexing is a row-major bijection; the table round-trips patch masks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hipt.slides.geometry import SlideGeometry
from hipt.slides.regions import (
    flatten_mask,
    geometry_of,
    patch_at,
    patch_grid,
    patch_index,
    patch_masks,
    patch_origins,
    patch_rowcol,
    read_metadata,
    read_regions,
    regions_table,
    unflatten_mask,
    with_metadata,
)
from hipt.slides.tiling import choose_level, select_regions
from hipt.slides.tissue import TissueMask


@given(grid=st.integers(1, 32), data=st.data())
def test_index_rowcol_bijection(grid, data):
    row = data.draw(st.integers(0, grid - 1))
    col = data.draw(st.integers(0, grid - 1))
    i = patch_index(row, col, grid)
    assert i == row * grid + col and patch_rowcol(i, grid) == (row, col)


def test_all_indices_are_hit_once():
    got = sorted(patch_index(r, c) for r in range(16) for c in range(16))
    assert got == list(range(256))
    with pytest.raises(ValueError):
        patch_index(16, 0)
    with pytest.raises(ValueError):
        patch_rowcol(256)
    assert patch_grid(4096, 256) == 16
    with pytest.raises(ValueError):
        patch_grid(4096, 300)


@settings(max_examples=100, deadline=None)
@given(
    x=st.integers(0, 200_000),
    y=st.integers(0, 200_000),
    mpp=st.floats(0.1, 1.0),
    target=st.sampled_from([0.5, 1.0]),
)
def test_patch_origins_map_back_to_their_index(x, y, mpp, target):
    origins = patch_origins(x, y, mpp, target)
    assert origins.shape == (256, 2) and origins.dtype == np.int64
    assert tuple(origins[0]) == (x, y)
    assert len({tuple(o) for o in origins}) == 256
    s = 256 * target / mpp
    for i in range(256):
        px, py = origins[i]
        assert patch_at(px, py, x, y, mpp, target) == i
        r, c = patch_rowcol(i)
        assert abs(px - (x + c * s)) < 1 and abs(py - (y + r * s)) < 1  # at the exact spot
    with pytest.raises(ValueError):
        patch_at(x - 1, y, x, y, mpp, target)


@given(arrays(np.bool_, (16, 16)))
def test_mask_flatten_round_trip(m):
    back = unflatten_mask(flatten_mask(m))
    assert back.dtype == np.bool_ and back.shape == (16, 16)
    np.testing.assert_array_equal(back, m)
    assert flatten_mask(m)[17] == m[1, 1]  # row-major


def test_table_parquet_round_trip(tmp_path):
    """A slide's regions table keeps its geometry: geometry_of(rows) gives it back exactly."""
    rng = np.random.default_rng(0)
    mask = TissueMask(rng.random((100, 100)) < 0.5, 64.0)
    sel = select_regions(mask, 6400, 6400, 0.25, 0.5, 1024, 64, 0.01, 0.25)
    choice = choose_level([1, 4], 0.25, 0.5)
    geom = SlideGeometry(
        slide_id="s1", path="/x/s1.svs", backend="cucim", width=6400, height=6400, mpp=0.25,
        mpp_source="manifest", read_level=choice.level, read_size=choice.read_size(1024),
        read_downsample=1.0, target_mpp=0.5, region_px=1024, patch_px=64,
    )  # fmt: skip
    t = regions_table(geom, sel)
    path = tmp_path / "r.parquet"
    import pyarrow.parquet as pq

    pq.write_table(with_metadata(t, {"config_hash": "abc"}), path)
    assert read_metadata(path) == {"config_hash": "abc"}
    df = read_regions(path)
    assert len(df) == len(sel.origins) > 0
    assert list(df["region"]) == list(range(len(df)))
    assert df["read_size"].iloc[0] == 2048 and df["read_level"].iloc[0] == 0
    np.testing.assert_array_equal(patch_masks(df), sel.patch_masks)
    assert (df["n_tissue_patches"].to_numpy() == sel.patch_masks.sum(axis=(1, 2))).all()
    assert geometry_of(df) == geom
