"""Tiling maths: level choice, region grid, patch fractions, region selection."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hipt.slides.tiling import (
    choose_level,
    grid_shape,
    patch_fractions,
    region_grid,
    region_size_l0,
    select_regions,
)
from hipt.slides.tissue import TissueMask

mpps = st.floats(0.1, 2.0)
targets = st.sampled_from([0.25, 0.5, 1.0, 2.0])


@pytest.mark.parametrize(
    "downsamples,mpp,target,level,read",
    [
        ([1, 4, 16], 0.25, 0.5, 0, 8192),  # 40x svs: 8192 level-0 px resized to 4096
        ([1], 0.499, 0.5, 0, 4104),  # the sample slide
        ([1, 4, 16], 0.5, 0.5, 0, 4096),
        ([1, 2, 4], 0.25, 0.5, 1, 4096),  # a true 20x level exists
        ([1, 4, 16], 0.126, 2.0, 2, 4063),  # level 2 at 2.016 µm is within 2% of 2.0
        ([1, 4, 16], 0.13, 2.0, 1, 15754),  # level 2 at 2.08 µm is too coarse: use level 1
        ([1, 4.00037, 16.0015], 0.2527, 1.0, 1, 4052),  # level 1 at 1.0109 is within 2%
        ([1, 4], 0.504, 0.5, 0, 4063),  # 0.8% coarser: read at level 0, no warning
    ],
)
def test_choose_level_examples(downsamples, mpp, target, level, read):
    c = choose_level(downsamples, mpp, target)
    assert (c.level, c.read_size(4096), c.upsampled) == (level, read, False)


def test_coarser_slide_is_upsampled_from_level_zero():
    c = choose_level([1, 4], 1.0, 0.5)
    assert c.upsampled and c.level == 0 and c.read_size(4096) == 2048


@settings(max_examples=200, deadline=None)
@given(
    mpp=mpps,
    target=targets,
    ds=st.lists(st.floats(1.5, 64.0), min_size=0, max_size=4),
    region_px=st.sampled_from([256, 1024, 4096]),
)
def test_level_choice_and_scale_math(mpp, target, ds, region_px):
    downsamples = [1.0, *sorted(ds)]
    tol = 0.02
    c = choose_level(downsamples, mpp, target, tol)
    level_mpps = [mpp * d for d in downsamples]
    assert math.isclose(c.level_mpp, level_mpps[c.level])
    fine = [m for m in level_mpps if m <= target * (1 + tol)]
    if fine:
        assert not c.upsampled and c.level_mpp == max(fine)
    else:
        assert c.upsampled and c.level == 0
    read = c.read_size(region_px)
    # the read covers the region's physical extent up to half a level pixel
    assert abs(read * c.level_mpp - region_px * target) <= c.level_mpp / 2 + 1e-9


@settings(max_examples=300, deadline=None)
@given(
    w=st.integers(1, 200_000),
    h=st.integers(1, 200_000),
    mpp=mpps,
    target=targets,
    region_px=st.sampled_from([512, 4096]),
)
def test_region_grid_properties(w, h, mpp, target, region_px):
    step = region_size_l0(mpp, target, region_px)
    assume(w / step < 300 and h / step < 300)
    regions = region_grid(w, h, mpp, target, region_px)
    rows, cols = grid_shape(w, h, mpp, target, region_px)
    assert len(regions) == rows * cols
    assert cols == max(1, math.ceil((w - 0.5) / step)) or abs((w - 0.5) / step % 1) < 1e-6
    assert rows == max(1, math.ceil((h - 0.5) / step)) or abs((h - 0.5) / step % 1) < 1e-6
    assert abs(cols - math.ceil(w / step)) <= 1 and abs(rows - math.ceil(h / step)) <= 1
    assert len(set(regions)) == len(regions)
    for i, (x, y) in enumerate(regions):
        r, c = divmod(i, cols)
        assert (x, y) == (
            math.floor(c * step + 0.5),
            math.floor(r * step + 0.5),
        )  # on the grid, row-major
        assert 0 <= x < w and 0 <= y < h  # every region intersects the slide
    xs, ys = sorted({x for x, _ in regions}), sorted({y for _, y in regions})
    assert xs[-1] + step >= w - 1 and ys[-1] + step >= h - 1  # the grid covers the slide


def test_small_slide_is_one_region():
    assert region_grid(2220, 2967, 0.499, 0.5) == [(0, 0)]
    assert math.isclose(region_size_l0(0.499, 0.5, 4096), 4104.208, abs_tol=1e-3)


def test_patch_fractions_exact_on_aligned_mask():
    """Mask px = 64 level-0 px; patches 128 level-0 px = 2x2 mask px each."""
    mask = np.zeros((40, 40), bool)
    mask[0:4, 0:2] = True  # patches (0,0) and (1,0) of region (0,0)
    mask[5, 5] = True  # one quarter of patch (2,2)
    m = TissueMask(mask, 64.0)
    f = patch_fractions(m, [(0, 0), (2048, 0)], region_l0=2048.0, grid=16)
    assert f.shape == (2, 16, 16)
    assert f[0, 0, 0] == 1.0 and f[0, 1, 0] == 1.0 and f[0, 2, 2] == 0.25
    assert f[0].sum() == 2.25 and f[1].sum() == 0.0


def test_patch_fraction_half_pixel_and_outside_slide():
    m = TissueMask(np.ones((4, 4), bool), 10.0)  # a 40x40 level-0 slide, all tissue
    f = patch_fractions(m, [(0, 0)], region_l0=80.0, grid=2)
    np.testing.assert_allclose(f[0], [[1.0, 0.0], [0.0, 0.0]])
    f = patch_fractions(m, [(25, 0)], region_l0=20.0, grid=1)  # half outside on the right
    np.testing.assert_allclose(f[0], [[0.75]])


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    thresholds=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=5),
    patch_t=st.floats(0.0, 1.0),
)
def test_kept_count_never_increases_with_min_tissue(seed, thresholds, patch_t):
    rng = np.random.default_rng(seed)
    mask = TissueMask(rng.random((60, 90)) < rng.random(), 32.0)
    counts = [
        len(select_regions(mask, 2880, 1920, 0.5, 0.5, 512, 32, t, patch_t).origins)
        for t in sorted(thresholds)
    ]
    assert counts == sorted(counts, reverse=True)
    more = [
        len(select_regions(mask, 2880, 1920, 0.5, 0.5, 512, 32, 0.01, p).origins)
        for p in sorted(thresholds)
    ]
    assert more == sorted(more, reverse=True)


def layout_mask(layout, cell_um, um_per_mask_px):
    """Mask of a cell layout at a given physical mask resolution."""
    k = round(cell_um / um_per_mask_px)
    return np.kron(layout, np.ones((k, k), dtype=bool)).astype(bool)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_same_physical_layout_same_regions_at_40x_and_20x(seed):
    """One layout at 0.25 and 0.5 µm/px gives regions at the same µm and identical masks."""
    rng = np.random.default_rng(seed)
    layout = rng.random((24, 40)) < 0.3
    cell_um = 32.0  # one 64-px patch at 0.5 µm/px
    out = {}
    for mpp in (0.25, 0.5):
        w, h = round(layout.shape[1] * cell_um / mpp), round(layout.shape[0] * cell_um / mpp)
        mask = TissueMask(layout_mask(layout, cell_um, 4.0), 4.0 / mpp)
        out[mpp] = select_regions(mask, w, h, mpp, 0.5, region_px=1024, patch_px=64)
    a, b = out[0.25], out[0.5]
    assert [(x * 0.25, y * 0.25) for x, y in a.origins] == [
        (x * 0.5, y * 0.5) for x, y in b.origins
    ]
    np.testing.assert_array_equal(a.patch_masks, b.patch_masks)
    # and the masks are the layout itself, cut into 16x16 blocks
    padded = np.zeros((32, 48), bool)
    padded[:24, :40] = layout
    for (x, y), pm in zip(b.origins, b.patch_masks, strict=True):
        r, c = round(y * 0.5 / cell_um), round(x * 0.5 / cell_um)
        np.testing.assert_array_equal(pm, padded[r : r + 16, c : c + 16])
