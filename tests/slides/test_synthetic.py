"""Synthetic slides: real tissue tiles, the layout they encode, both backends agree, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from hipt.slides import open_slide
from hipt.slides.synthetic import (
    blob_layout,
    make_synthetic_slide,
    saturation_unit,
    tissue_tiles_from_sample,
)


def test_tissue_tiles_are_real_tissue(tissue_tiles, sample_path):
    assert tissue_tiles.ndim == 4 and tissue_tiles.shape[1:] == (256, 256, 3)
    assert tissue_tiles.dtype == np.uint8 and len(tissue_tiles) >= 20
    # every 2nd pixel: the fraction is the same to a percent, at a quarter of the cost
    assert ((saturation_unit(tissue_tiles[:, ::2, ::2]) > 0.08).mean(axis=(1, 2)) > 0.5).all()
    assert tissue_tiles_from_sample(sample_path) is tissue_tiles  # cached per process


def test_blob_layout_fraction_and_determinism():
    layout = blob_layout(40, 30, fraction=0.4, seed=3)
    assert layout.shape == (40, 30) and layout.sum() == round(0.4 * 1200)
    assert np.array_equal(layout, blob_layout(40, 30, fraction=0.4, seed=3))
    assert not np.array_equal(layout, blob_layout(40, 30, fraction=0.4, seed=4))


def test_file_structure_is_tiled_jpeg_pyramid(synthetic_slide):
    with tifffile.TiffFile(synthetic_slide.path) as tif:
        pages = list(tif.pages)
        assert [(p.imagewidth, p.imagelength) for p in pages] == [
            (4096, 4096),
            (1024, 1024),
            (256, 256),
        ]
        assert all(p.is_tiled and p.tilewidth == 256 and p.compression == 7 for p in pages)
        assert pages[0].description.startswith("Aperio Image Library")


def test_default_cell_size_is_256_px_at_half_micron(synthetic_slide, generic_slide):
    assert synthetic_slide.cell_px == 512  # 0.25 µm/px: 512 px = 128 µm = 256 px at 0.5 µm/px
    assert generic_slide.cell_px == 256
    assert synthetic_slide.layout.shape == (8, 8)


@pytest.mark.parametrize("backend", ["cucim", "openslide"])
def test_layout_recovered_at_every_level(synthetic_slide, hand_layout, backend):
    cell = synthetic_slide.cell_px
    with open_slide(synthetic_slide.path, backend=backend) as reader:
        assert reader.level_dimensions == synthetic_slide.level_dimensions
        for level, ds in enumerate(synthetic_slide.levels):
            lw, lh = reader.level_dimensions[level]
            step = 4 // min(ds, 4)  # subsample level 0 and 1 to keep the test fast
            sat = saturation_unit(reader.read_region(0, 0, level, lw, lh)[::step, ::step])
            side = cell // ds // step
            cells = sat.reshape(8, side, 8, side).mean(axis=(1, 3))
            tissue, glass = cells[hand_layout], cells[~hand_layout]
            assert tissue.min() > 0.15, (level, tissue.min())  # stained tissue
            assert glass.max() < 0.02, (level, glass.max())  # grey glass with noise
            assert tissue.mean() > 10 * glass.mean()


def test_tissue_regions_match_layout(synthetic_slide, hand_layout):
    assert len(synthetic_slide.tissue_regions(4096)) == 1
    regions = synthetic_slide.tissue_regions(1024)  # 2x2 cells each
    expected = {(c * 1024, r * 1024) for r in range(4) for c in range(4)
                if hand_layout[2 * r : 2 * r + 2, 2 * c : 2 * c + 2].any()}  # fmt: skip
    assert set(regions) == expected


def test_same_seed_same_file_and_nonsquare_levels(tmp_path, tissue_tiles):
    args = dict(width=1000, height=700, mpp=0.5, levels=(1, 2, 8), source=tissue_tiles, seed=5)
    a = make_synthetic_slide(tmp_path / "a.tif", **args)
    b = make_synthetic_slide(tmp_path / "b.tif", **args)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.level_dimensions == [(1000, 700), (500, 350), (125, 88)]
    assert a.layout.shape == (3, 4)
    with open_slide(a.path, "cucim") as cu, open_slide(a.path, "openslide") as os_:
        assert cu.level_dimensions == os_.level_dimensions == a.level_dimensions
        assert np.array_equal(cu.read_region(0, 0, 1, 500, 350), os_.read_region(0, 0, 1, 500, 350))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"levels": (2, 4)}, "levels must start at 1"),
        ({"levels": (1, 4, 4)}, "levels must start at 1 and increase"),
        ({"tile_px": 100}, "multiple of 16"),
        ({"layout": np.ones((3, 3), bool)}, "layout shape"),
        ({"mpp": None}, "needs an mpp"),
        ({"flavor": "philips"}, "flavor"),
    ],
)
def test_invalid_arguments(tmp_path, tissue_tiles, kwargs, match):
    args = {"mpp": 0.5, "source": tissue_tiles, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_synthetic_slide(tmp_path / "x.tif", 512, 512, **args)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_bad_inputs_are_small(bad_inputs):
    assert set(bad_inputs) == {
        "zero_bytes", "truncated", "random_bytes", "png_as_svs", "unsupported_ext", "no_mpp",
        "corrupt_tile",
    }  # fmt: skip
    assert all(p.stat().st_size < 2_000_000 for p in bad_inputs.values())
