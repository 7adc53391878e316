"""Re-encode feats4k: ``python -m pipelines.encode_4k FEATURES=<stores> CHECKPOINT4K=<file>``."""

from __future__ import annotations

from collections.abc import Sequence

from hipt.cli import main_guard, run_stage
from hipt.extract.config import Encode4KConfig

SHORTCUTS = {"FEATURES": "features", "CHECKPOINT4K": "checkpoint4k", "OUT": "out"}


def run(cfg: Encode4KConfig) -> int:
    """Run the stage; imported here so that config errors answer before torch is loaded."""
    from hipt.extract.encode4k import run as run_encode

    return run_encode(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stage with ``key=value`` overrides of conf/encode_4k.yaml; return the exit code."""
    return run_stage(Encode4KConfig, "encode_4k.yaml", run, argv, shortcuts=SHORTCUTS)


if __name__ == "__main__":
    main_guard(main())
