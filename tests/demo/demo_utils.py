"""Helpers shared by the demo tests."""

from __future__ import annotations

from pathlib import Path

from hipt.demo.cohort import CohortConfig, CohortFiles

MICRO = CohortConfig(
    n_patients=8,
    slides_per_patient=[1, 1],
    regions=[1, 2],
    fine_mpp_every=4,
    include_sample=False,
)


def micro_config() -> CohortConfig:
    """A fresh copy of the micro cohort's settings."""
    return CohortConfig(**{k: getattr(MICRO, k) for k in MICRO.__dataclass_fields__})


def slide_path(files: CohortFiles, slide_id: str) -> Path:
    """The synthetic slide file of ``slide_id``."""
    return files.root / "slides" / f"{slide_id}.svs"
