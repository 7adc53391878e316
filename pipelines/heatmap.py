"""Factorized HIPT attention over a slide: ``python -m pipelines.heatmap SLIDE=... OUT=...``."""

from __future__ import annotations

from collections.abc import Sequence

from hipt.cli import main_guard, run_stage
from hipt.heatmap.config import HeatmapConfig
from hipt.heatmap.runner import run

SHORTCUTS = {
    "SLIDE": "slide",
    "FEATURES": "features",
    "MODEL": "model",
    "OUT": "out",
    "CHECKPOINT256": "checkpoint256",
    "CHECKPOINT4K": "checkpoint4k",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the heatmap stage with ``key=value`` overrides of conf/heatmap.yaml; return the code."""
    return run_stage(HeatmapConfig, "heatmap.yaml", run, argv, shortcuts=SHORTCUTS)


if __name__ == "__main__":
    main_guard(main())
