"""Factorized HIPT attention over a slide: ``python -m pipelines.heatmap SLIDE=... OUT=...``."""

from __future__ import annotations

from collections.abc import Sequence

from hipt.cli import Deprecated, main_guard, run_stage
from hipt.heatmap.config import HeatmapConfig

SHORTCUTS = {
    "SLIDE": "slide",
    "SLIDES": "slides",
    "TASK": "task",
    "FEATURES": "features",
    "MODEL": "model",
    "OUT": "out",
    "CHECKPOINT256": "checkpoint256",
    "CHECKPOINT4K": "checkpoint4k",
}
DEPRECATED = {
    "slide_mpp": Deprecated(
        None, "ignored: the slide's MPP (and how tiling got it) comes from the feature store"
    ),  # fmt: skip
}


def run(cfg: HeatmapConfig) -> int:
    """Run the stage; imported here so that config errors answer before torch is loaded."""
    from hipt.heatmap.runner import run as run_heatmap

    return run_heatmap(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the heatmap stage with ``key=value`` overrides of conf/heatmap.yaml; return the code."""
    return run_stage(HeatmapConfig, "heatmap.yaml", run, argv, SHORTCUTS, DEPRECATED)


if __name__ == "__main__":
    main_guard(main())
