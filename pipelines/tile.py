"""Tile slides into 4096-px regions: ``python -m pipelines.tile SLIDES=<folder|csv> OUT=<dir>``."""

from __future__ import annotations

from collections.abc import Sequence

from hipt.cli import main_guard, run_stage
from hipt.tile.config import TileConfig

SHORTCUTS = {"SLIDES": "slides", "OUT": "out", "ANNOTATIONS": "annotations"}


def run(cfg: TileConfig) -> int:
    """Run the stage; imported here so that config errors answer before torch is loaded."""
    from hipt.tile.runner import run as run_tile

    return run_tile(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tile stage with ``key=value`` overrides of conf/tile.yaml; return the exit code."""
    return run_stage(TileConfig, "tile.yaml", run, argv, shortcuts=SHORTCUTS)


if __name__ == "__main__":
    main_guard(main())
