"""Fixtures of the tile-stage tests: the sample slide, a folder of bad inputs, tissue tiles."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from hipt.errors import HiptError


@pytest.fixture(scope="session")
def sample_slide() -> Path:
    from hipt.samples import sample_slide_path

    try:
        return sample_slide_path()
    except HiptError as err:  # no sample and no network: the stage tests cannot run
        pytest.skip(f"sample slide unavailable: {err}")


@pytest.fixture(scope="session")
def tiles(sample_slide: Path) -> np.ndarray:
    from hipt.slides.synthetic import tissue_tiles_from_sample

    return tissue_tiles_from_sample(sample_slide)


@pytest.fixture(scope="session")
def bad_folder(tmp_path_factory: pytest.TempPathFactory, sample_slide: Path) -> Path:
    """The sample slide plus every damaged input of ``write_bad_inputs``."""
    from hipt.slides.synthetic import write_bad_inputs

    folder = tmp_path_factory.mktemp("bad")
    write_bad_inputs(folder)
    shutil.copy(sample_slide, folder / "sample.svs")
    return folder


@pytest.fixture
def corrupt_level0_tile():
    """A function zeroing the first bytes of the level-0 TIFF tile holding pixel ``(x, y)``."""
    return _corrupt_level0_tile


def _corrupt_level0_tile(path: Path, x: int, y: int) -> None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        index = (y // page.tilelength) * math.ceil(page.imagewidth / page.tilewidth)
        offset = int(page.dataoffsets[index + x // page.tilewidth])
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * 64)
