"""Demo fixtures: a micro cohort generated once per session."""

from __future__ import annotations

import pytest
from demo_utils import micro_config

from hipt.demo.cohort import CohortConfig, CohortFiles, generate_cohort


@pytest.fixture(scope="session")
def micro_cohort(tmp_path_factory: pytest.TempPathFactory) -> CohortFiles:
    """8 patients, one 4096-px slide each; patients 3 and 7 are scanned at 0.25 µm/px."""
    return generate_cohort(tmp_path_factory.mktemp("demo") / "cohort", micro_config(), seed=3)


@pytest.fixture()
def micro_cfg() -> CohortConfig:
    """The settings of ``micro_cohort`` (a fresh copy)."""
    return micro_config()
