"""Cache HIPT features: ``python -m pipelines.extract_features TILES=<dir> OUT=<dir>``."""

from __future__ import annotations

from collections.abc import Sequence

from hipt.cli import main_guard, run_stage
from hipt.extract.config import ExtractConfig

SHORTCUTS = {
    "TILES": "tiles",
    "OUT": "out",
    "CHECKPOINT256": "checkpoint256",
    "CHECKPOINT4K": "checkpoint4k",
}


def run(cfg: ExtractConfig) -> int:
    """Run the stage; imported here so that config errors answer before torch is loaded."""
    from hipt.extract.runner import run as run_extract

    return run_extract(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stage with ``key=value`` overrides of conf/extract.yaml; return the exit code."""
    return run_stage(ExtractConfig, "extract.yaml", run, argv, shortcuts=SHORTCUTS)


if __name__ == "__main__":
    main_guard(main())
