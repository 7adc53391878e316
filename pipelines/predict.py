"""Apply trained slide models to a new cohort: ``python -m pipelines.predict MODEL= ...``."""

from __future__ import annotations

from collections.abc import Sequence

from hipt.cli import main_guard, run_stage
from hipt.predict.config import PredictConfig

SHORTCUTS = {
    "MODEL": "model",
    "COHORT": "cohort",
    "FEATURES": "features",
    "OUT": "out",
    "TASK": "task",
}


def run(cfg: PredictConfig) -> int:
    """Run the stage; imported here so that config errors answer before torch is loaded."""
    from hipt.predict.runner import run as run_predict

    return run_predict(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the predict stage with ``key=value`` overrides of conf/predict.yaml; return the code."""
    return run_stage(PredictConfig, "predict.yaml", run, argv, SHORTCUTS)


if __name__ == "__main__":
    main_guard(main())
