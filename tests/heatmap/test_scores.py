"""Percentile maps, patch tiling, shifted-pass averaging and the factorized combination."""

from __future__ import annotations

import numpy as np
import pytest

from hipt.heatmap.scores import (
    ShiftAccumulator,
    combine,
    percentile,
    region_maps,
    tile_patches,
    vit4k_percentiles,
    vit256_percentiles,
)


def reference_percentile(v: np.ndarray) -> np.ndarray:
    """rankdata(v) * 100 / len(v) with average ranks for ties, written out by hand."""
    out = np.empty(len(v))
    for i, x in enumerate(v):
        below, equal = (v < x).sum(), (v == x).sum()
        out[i] = (below + (equal + 1) / 2) * 100 / len(v)
    return out


def test_percentile_is_the_official_formula_with_ties_and_masks():
    """Average-rank percentiles equal a hand count; masked entries are ranked among the valid."""
    rng = np.random.default_rng(0)
    v = rng.integers(0, 5, size=40).astype(float)  # many ties
    np.testing.assert_allclose(percentile(v), reference_percentile(v), rtol=1e-6)
    valid = rng.random(40) > 0.3
    got = percentile(v, valid)
    assert np.isnan(got[~valid]).all()
    np.testing.assert_allclose(got[valid], reference_percentile(v[valid]), rtol=1e-6)
    rows = rng.random((3, 7))
    np.testing.assert_allclose(
        percentile(rows, axis=-1), [reference_percentile(r) for r in rows], rtol=1e-6
    )


def test_tile_patches_puts_token_a_b_of_patch_n_at_row_major_position():
    """Token (a, b) of patch n = 16 r + c lands at (r t + a, c t + b)."""
    t = 3
    maps = np.arange(256 * t * t, dtype=float).reshape(1, 256, t, t)
    grid = tile_patches(maps)[0]
    for n, a, b in [(0, 0, 0), (1, 2, 1), (17, 1, 2), (255, 2, 2), (16 * 9 + 4, 0, 1)]:
        r, c = divmod(n, 16)
        assert grid[r * t + a, c * t + b] == maps[0, n, a, b]


def test_vit256_percentiles_rank_each_patch_alone_and_add_the_head_mean():
    """Each patch's t*t tokens get ranks 1..t*t on their own; the last map ranks the head mean."""
    rng = np.random.default_rng(1)
    attn = rng.random((256, 2, 4, 4))
    p = vit256_percentiles(attn)
    assert p.shape == (3, 64, 64)
    block = p[0, 4:8, 8:12]  # patch (1, 2) = 18, head 0
    np.testing.assert_allclose(np.sort(block.ravel()), np.arange(1, 17) * 100 / 16, rtol=1e-6)
    np.testing.assert_allclose(
        p[2, 4:8, 8:12].ravel(), reference_percentile(attn[18].mean(0).ravel()), rtol=1e-6
    )


def test_vit4k_percentiles_rank_over_tissue_cells_only():
    """Background cells are NaN and the tissue cells span (0, 100] among themselves."""
    rng = np.random.default_rng(2)
    attn = rng.random((3, 16, 16))
    valid = np.zeros((16, 16), bool)
    valid[2:6, 3:9] = True
    p = vit4k_percentiles(attn, valid)
    assert np.isnan(p[:, ~valid]).all()
    np.testing.assert_allclose(p[1][valid], reference_percentile(attn[1][valid]), rtol=1e-6)
    assert vit4k_percentiles(attn, None)[0].max() == pytest.approx(100.0)


def test_shift_accumulator_averages_overlaps_and_drops_pushed_out_cells():
    """A pass shifted by o covers [o, S) and the overlap holds the mean of both passes."""
    acc = ShiftAccumulator(1, 4)
    acc.add(np.full((1, 4, 4), 10.0), 0)
    acc.add(np.full((1, 4, 4), 30.0), 2)
    res = acc.result()[0]
    assert (res[:2] == 10).all() and (res[:, :2] == 10).all()
    assert (res[2:, 2:] == 20).all()


def test_combine_mean_is_the_official_weighted_mean_and_product_multiplies():
    """mean: (s4k*1 + s256*2)/3 (256 weighted double); product: 100 * prod(p/100)."""
    s4k, s256 = np.array([30.0, 90.0]), np.array([60.0, 10.0])
    np.testing.assert_allclose(combine([(s4k, 1.0), (s256, 2.0)]), (s4k + 2 * s256) / 3)
    got = combine([(50.0, 1.0), (s4k, 1.0), (s256, 2.0)], "product")
    np.testing.assert_allclose(got, 100 * 0.5 * s4k / 100 * s256 / 100, rtol=1e-6)


def test_region_maps_are_nan_outside_tissue_and_name_every_map():
    """Every map is NaN exactly on background tokens; names follow heads and pairs."""
    rng = np.random.default_rng(3)
    t = 2
    p256 = rng.random((3, 32, 32)) * 100
    p4k = rng.random((3, 32, 32)) * 100
    valid = np.zeros((16, 16), bool)
    valid[4:9, 1:3] = True
    rm = region_maps(p256, p4k, valid, 75.0, [(1, 0)], (1.0, 1.0, 2.0), "mean", [0, 1], [1])
    assert set(rm.maps) == {
        "slide_attention", "vit4k_mean", "vit4k_head1", "vit256_mean", "vit256_head0",
        "vit256_head1", "factorized_mean", "factorized_4kh1_256h0",
    }  # fmt: skip
    tokens = np.repeat(np.repeat(valid, t, 0), t, 1)
    for arr in rm.maps.values():
        assert (np.isnan(arr) == ~tokens).all()
    want = (75.0 + p4k[1] + 2 * p256[0]) / 4
    np.testing.assert_allclose(rm.maps["factorized_4kh1_256h0"][tokens], want[tokens], rtol=1e-5)
