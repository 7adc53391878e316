"""Heatmap fixtures: the square-tissue slide and its store, built once per session."""

from __future__ import annotations

import numpy as np
import pytest
from heatmap_data import Setup, make_square_setup

from hipt.errors import HiptError
from hipt.slides.synthetic import tissue_tiles_from_sample


@pytest.fixture(scope="module", autouse=True)
def no_wandb():
    """W&B off for these runs (the suite default, WANDB_MODE=offline, would win over config)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        yield


@pytest.fixture(scope="session")
def tissue_tiles() -> np.ndarray:
    try:
        return tissue_tiles_from_sample()
    except HiptError as err:
        pytest.skip(f"sample slide unavailable: {err}")


@pytest.fixture(scope="session")
def square_setup(tmp_path_factory: pytest.TempPathFactory, tissue_tiles: np.ndarray) -> Setup:
    """1536 x 1024 px at 0.5 µm/px (regions read at level 0), tissue exactly in the squares."""
    folder = tmp_path_factory.mktemp("heatmap_squares")
    return make_square_setup(folder, tissue_tiles, 0.5, (1, 4))


@pytest.fixture(scope="session")
def fine_square_setup(tmp_path_factory: pytest.TempPathFactory, tissue_tiles: np.ndarray) -> Setup:
    """3072 x 2048 px at 0.25 µm/px (regions read at level 1, 1024 level-0 px per region)."""
    folder = tmp_path_factory.mktemp("heatmap_fine_squares")
    return make_square_setup(folder, tissue_tiles, 0.25, (1, 2, 8))
