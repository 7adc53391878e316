"""Canvas geometry: the pixel-centre rounding rule, region painting and the canvas resolution."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hipt.heatmap.canvas import CanvasGeometry, CanvasStack, choose_canvas_mpp


@settings(max_examples=60, deadline=None)
@given(
    mpp=st.sampled_from([0.25, 0.2527, 0.499, 0.5]),
    canvas_mpp=st.floats(0.6, 20.0),
    x0=st.integers(0, 5000),
    side=st.integers(16, 3000),
    n=st.sampled_from([1, 4, 16, 256]),
)
def test_span_and_cells_follow_pixel_centres(mpp, canvas_mpp, x0, side, n):
    """A pixel belongs to the square iff its centre is inside; its cell is the one holding it."""
    g = CanvasGeometry(10000, 10000, mpp, canvas_mpp)
    p0, p1 = g.span(x0, x0 + side, g.width)
    for p in range(max(0, p0 - 2), min(g.width, p1 + 2)):
        centre = (p + 0.5) * canvas_mpp / mpp  # level-0, computed in another way
        inside = x0 <= centre < x0 + side
        if abs(centre - x0) > 1e-6 and abs(centre - x0 - side) > 1e-6:
            assert inside == (p0 <= p < p1)
    if p1 > p0:
        cells = g.cells(p0, p1, x0, side, n)
        centres = (np.arange(p0, p1) + 0.5) * canvas_mpp / mpp
        expect = np.floor((centres - x0) / side * n)
        ok = np.abs((centres - x0) / side * n - np.round((centres - x0) / side * n)) > 1e-6
        assert (cells[ok] == np.clip(expect[ok], 0, n - 1)).all()


def test_canvas_size_and_transform():
    """A 150k px slide at 0.25 µm/px is ~4,700 px at 8 µm/px; level-0 maps by mpp ratio."""
    g = CanvasGeometry(150_000, 120_000, 0.25, 8.0)
    assert (g.width, g.height) == (round(150_000 / 32), round(120_000 / 32))
    assert g.to_canvas(3200, 640) == (100.0, 20.0)


def test_paint_fills_exactly_the_region_cells_and_pools_when_coarser(tmp_path):
    """Painting a region touches only its pixel-centre box, cell by cell; coarse canvases
    average the cells under a pixel and keep NaN only where the centre cell is empty."""
    g = CanvasGeometry(1000, 600, 0.5, 2.0)  # 4 level-0 px per canvas px
    stack = CanvasStack(g, ["a"], tmp_path)
    cells = np.arange(16 * 16, dtype=np.float32).reshape(16, 16) / 2.56
    cells[0, 0] = np.nan
    stack.paint(100, 40, 256, {"a": cells})  # 16-px cells = 4 canvas px
    arr = np.asarray(stack.arrays["a"], dtype=np.float32)
    drawn = ~np.isnan(arr)
    assert drawn.sum() == 64 * 64 - 16
    rows, cols = np.nonzero(drawn)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 73, 25, 88)
    np.testing.assert_allclose(arr[10 + 4 * 3 + 1, 25 + 4 * 5 + 2], cells[3, 5], rtol=1e-3)
    coarse = CanvasStack(CanvasGeometry(1000, 600, 0.5, 32.0), ["a"], tmp_path / "c")
    fine = np.arange(256 * 256, dtype=np.float32).reshape(256, 256) / 655.36
    coarse.paint(0, 0, 512, {"a": fine})  # 2 level-0 px per cell, 64 per canvas px: 32 cells
    got = np.asarray(coarse.arrays["a"], dtype=np.float32)
    assert got.shape == (round(600 / 64), round(1000 / 64))
    np.testing.assert_allclose(got[0, 0], fine[:32, :32].mean(), rtol=1e-3)
    np.testing.assert_allclose(got[3, 5], fine[96:128, 160:192].mean(), rtol=1e-3)
    stack.close()
    coarse.close()


def test_choose_canvas_mpp_refines_small_slides_but_never_past_level0():
    """8 µm/px for big slides; small ones get min_side px; never finer than the slide."""
    assert choose_canvas_mpp(150_000, 100_000, 0.25, 8.0, 1024) == 8.0
    assert math.isclose(choose_canvas_mpp(2220, 2967, 0.499, 8.0, 1024), 2967 * 0.499 / 1024)
    assert choose_canvas_mpp(500, 400, 0.5, 8.0, 4096) == 0.5
