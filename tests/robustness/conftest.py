"""Robustness fixtures: small tiled slides, feature stores and a planted cohort, built once."""

from __future__ import annotations

from pathlib import Path

import pytest
from robust_utils import SMALL_TILING, TINY_EXTRACT, stage

from hipt.samples import sample_slide_path


@pytest.fixture(scope="session")
def sample_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample slide tiled into 1024-px regions of 64-px patches."""
    out = tmp_path_factory.mktemp("rob") / "tiles"
    assert (
        stage(
            "tile",
            f"slides={sample_slide_path()}",
            f"out={out}",
            "wandb.mode=disabled",
            *SMALL_TILING,
        )
        == 0
    )
    return out


@pytest.fixture(scope="session")
def sample_features(sample_tiles: Path) -> Path:
    """Tiny random-weight feature stores of ``sample_tiles``."""
    out = sample_tiles.parent / "features"
    assert stage("extract_features", f"tiles={sample_tiles}", f"out={out}", *TINY_EXTRACT) == 0
    return out


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """Feature stores + cohort CSV with planted labels (no slides: built in a second)."""
    from planted import make_planted_cohort

    root = tmp_path_factory.mktemp("planted")
    return make_planted_cohort(root, n_patients=12, regions_per_slide=(1, 2), seed=0)
