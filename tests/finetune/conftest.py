"""Fixtures for the finetune tests: the planted-signal cohort shared by the whole session."""

from __future__ import annotations

import pytest
from planted import SyntheticCohort, make_planted_cohort


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCohort:
    """60 patients, 1-2 slides each, 2-5 regions per slide; one region carries every label."""
    return make_planted_cohort(tmp_path_factory.mktemp("planted"), n_patients=60, seed=0)
