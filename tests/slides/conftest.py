"""Slide fixtures: the real sample, small synthetic pyramids built once per session, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hipt.errors import HiptError
from hipt.slides.synthetic import (
    SyntheticSlide,
    make_synthetic_slide,
    tissue_tiles_from_sample,
    write_bad_inputs,
)

# Hand-drawn 8x8 layout of 512-px cells (4096 px at 0.25 µm/px): a blob, a bar and specks.
LAYOUT = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 1, 0],
        [0, 1, 1, 1, 0, 0, 1, 0],
        [0, 0, 1, 1, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 0, 1, 0],
        [1, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 1],
    ],
    dtype=bool,
)


@pytest.fixture(scope="session")
def hand_layout() -> np.ndarray:
    """The layout of ``synthetic_slide`` (bool [8, 8], cells of 512 px)."""
    return LAYOUT.copy()


@pytest.fixture(scope="session")
def sample_path() -> Path:
    from hipt.samples import sample_slide_path

    try:
        return sample_slide_path()
    except HiptError as err:  # no sample and no network: the slide tests cannot run
        pytest.skip(f"sample slide unavailable: {err}")


@pytest.fixture(scope="session")
def tissue_tiles(sample_path: Path) -> np.ndarray:
    return tissue_tiles_from_sample(sample_path)


@pytest.fixture(scope="session")
def synthetic_slide(
    tmp_path_factory: pytest.TempPathFactory, tissue_tiles: np.ndarray
) -> SyntheticSlide:
    """4096 x 4096 Aperio-style slide at 0.25 µm/px, levels 1/4/16, cells of 512 px."""
    folder = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_slide(
        folder / "synthetic.svs", 4096, 4096, 0.25, levels=(1, 4, 16), layout=LAYOUT,
        source=tissue_tiles, seed=1,
    )  # fmt: skip


@pytest.fixture(scope="session")
def generic_slide(
    tmp_path_factory: pytest.TempPathFactory, tissue_tiles: np.ndarray
) -> SyntheticSlide:
    """2048 x 1536 generic tiled TIFF at 0.5 µm/px (MPP only in the resolution tags)."""
    folder = tmp_path_factory.mktemp("generic")
    return make_synthetic_slide(
        folder / "generic.tif", 2048, 1536, 0.5, levels=(1, 4), source=tissue_tiles, seed=2,
        flavor="generic",
    )  # fmt: skip


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory, sample_path: Path) -> dict[str, Path]:
    return write_bad_inputs(tmp_path_factory.mktemp("bad"))
