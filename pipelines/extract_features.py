"""Cache HIPT features: ``python -m pipelines.extract_features TILES=<dir> OUT=<dir>``."""

from __future__ import annotations

from collections.abc import Sequence

from hipt.cli import Deprecated, main_guard, run_stage
from hipt.extract.config import ExtractConfig

SHORTCUTS = {
    "TILES": "tiles",
    "OUT": "out",
    "CHECKPOINT256": "checkpoint256",
    "CHECKPOINT4K": "checkpoint4k",
    "MODEL256": "model_256",
    "model256": "model_256",
}


DEPRECATED = {
    "gpu_decode": Deprecated(
        "decode", "use decode=cpu|gpu_batch|auto (gpu_decode=true is decode=gpu_batch)",
        values={"true": "gpu_batch", "false": "cpu"},
    ),
}  # fmt: skip


def run(cfg: ExtractConfig) -> int:
    """Run the stage; imported here so that config errors answer before torch is loaded."""
    from hipt.extract.runner import run as run_extract

    return run_extract(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stage with ``key=value`` overrides of conf/extract.yaml; return the exit code."""
    return run_stage(ExtractConfig, "extract.yaml", run, argv, shortcuts=SHORTCUTS,
                     deprecated=DEPRECATED)  # fmt: skip


if __name__ == "__main__":
    main_guard(main())
