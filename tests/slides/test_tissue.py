"""Tissue segmentation: saturation, vote == median, area filters in µm², scale invariance."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage as ndi

from hipt.errors import ConfigError
from hipt.slides.tissue import (
    TissueConfig,
    majority_filter,
    otsu_threshold,
    saturation_255,
    segment_tissue,
    validate_tissue_config,
)

PINK = (200, 110, 160)  # saturation 115: clearly tissue
WHITE = (245, 245, 245)


def canvas(h, w, color=WHITE):
    img = np.empty((h, w, 3), np.uint8)
    img[:] = color
    return img


def test_saturation_matches_hsv_definition():
    img = np.array([[[255, 255, 255], [255, 0, 0], [200, 100, 100], [0, 0, 0]]], np.uint8)
    assert saturation_255(img).tolist() == [[0, 255, 128, 0]]


@settings(max_examples=40, deadline=None)
@given(
    img=arrays(np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24))),
    k=st.sampled_from([1, 3, 5, 7]),
    t=st.integers(0, 254),
)
def test_majority_vote_equals_median_then_threshold(img, k, t):
    """Thresholding the median-blurred saturation == median vote of the thresholded map."""
    expected = ndi.median_filter(img, size=k, mode="reflect") > t
    np.testing.assert_array_equal(majority_filter(img > t, k), expected)


def test_otsu_splits_two_modes():
    values = np.concatenate([np.full(500, 10), np.full(300, 120)]).astype(np.uint8)
    assert 10 <= otsu_threshold(values) < 120
    assert otsu_threshold(np.full(10, 7, np.uint8)) == 0


def test_square_found_speck_dropped_small_hole_filled_big_hole_kept():
    """At 8 µm per thumbnail px: 64 µm² per px. min 16384 µm² = 256 px; holes <= 1024 px fill."""
    img = canvas(200, 200)
    img[20:120, 20:120] = PINK  # 100x100 px tissue
    img[40:50, 40:50] = WHITE  # 100 px hole -> filled
    img[60:110, 60:110] = WHITE  # 2500 px hole -> stays
    img[150:160, 150:160] = PINK  # 100 px speck (6400 µm²) -> dropped
    m = segment_tissue(img, downsample=16.0, mpp=0.5)
    assert m.downsample == 16.0 and m.mask.dtype == bool
    assert m.mask[45, 45] and not m.mask[85, 85] and not m.mask[155, 155]
    assert m.mask[30, 30] and not m.mask[5, 5]
    # the tissue area is the square minus the big hole, within a pixel ring from the filters
    assert abs(int(m.mask.sum()) - (100 * 100 - 50 * 50)) < 400


def test_areas_are_physical_not_per_pixel():
    """The same 0.16 mm² piece is kept at every thumbnail scale; at ~0.01 mm² it is dropped."""
    for ds in (4.0, 8.0, 16.0):
        side_um = 400.0  # 0.16 mm² >= 16384 µm²
        px = int(side_um / (ds * 0.5))
        img = canvas(px + 40, px + 40)
        img[20 : 20 + px, 20 : 20 + px] = PINK
        assert segment_tissue(img, ds, 0.5).mask.any(), ds
    small = canvas(100, 100)
    small[40:53, 40:53] = PINK  # 13 px * 8 µm = 104 µm side: 10816 µm² < 16384
    assert not segment_tissue(small, 16.0, 0.5).mask.any()
    cfg = TissueConfig(min_area_um2=5000.0)
    assert segment_tissue(small, 16.0, 0.5, cfg).mask.any()


def test_otsu_and_blank_slide():
    assert not segment_tissue(canvas(64, 64), 32.0, 0.25).mask.any()
    img = canvas(100, 100)
    img[10:90, 10:90] = (220, 180, 200)  # faint stain, saturation 46
    cfg = TissueConfig(use_otsu=True)
    assert segment_tissue(img, 8.0, 0.5, cfg).mask[50, 50]


@pytest.mark.parametrize(
    "field,value",
    [("median_px", 4), ("median_px", 0), ("sat_threshold", 300), ("close_px", -1),
     ("min_area_um2", -1.0), ("max_hole_area_um2", -5.0)],
)  # fmt: skip
def test_invalid_parameters_raise_config_error(field, value):
    cfg = TissueConfig(**{field: value})
    with pytest.raises(ConfigError, match=field):
        validate_tissue_config(cfg)
