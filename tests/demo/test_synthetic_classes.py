"""Integer layouts with several tile banks (the demo's tissue classes) in the slide generator."""

from __future__ import annotations

import numpy as np
import pytest

from hipt.slides import open_slide
from hipt.slides.synthetic import make_synthetic_slide


def _solid(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (4, 64, 64, 3)).copy()


def test_each_cell_shows_its_class(tmp_path):
    """Value k >= 1 paints a tile of sources[k-1], 0 stays glass, at every pyramid level."""
    red, blue = _solid((200, 40, 60)), _solid((60, 40, 200))
    layout = np.array([[0, 1], [2, 1]])
    slide = make_synthetic_slide(
        tmp_path / "c.svs",
        512,
        512,
        0.5,
        levels=(1, 4),
        layout=layout,
        cell_px=256,
        sources=[red, blue],
    )
    assert slide.tissue_regions(256) == [(256, 0), (0, 256), (256, 256)]
    with open_slide(slide.path) as reader:
        for level, ds in enumerate((1, 4)):
            img = reader.read_region(0, 0, level, 512 // ds, 512 // ds).astype(int)
            c = 256 // ds
            mean = {
                (r, q): img[r * c + 2 : (r + 1) * c - 2, q * c + 2 : (q + 1) * c - 2]
                .reshape(-1, 3)
                .mean(0)
                for r in (0, 1)
                for q in (0, 1)
            }
            assert np.all(np.abs(mean[0, 0] - 243) < 6)  # glass
            for cell in ((0, 1), (1, 1)):
                assert mean[cell][0] > mean[cell][2] + 80  # red class
            assert mean[1, 0][2] > mean[1, 0][0] + 80  # blue class


def test_layout_values_must_name_a_source(tmp_path):
    with pytest.raises(ValueError, match="layout values"):
        make_synthetic_slide(
            tmp_path / "x.svs",
            256,
            256,
            0.5,
            levels=(1,),
            layout=np.array([[3]]),
            cell_px=256,
            sources=[_solid((1, 2, 3))],
        )
