"""``make finetune TASK=subtype|stage|survival|response COHORT=... FEATURES=... OUT=...``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from hipt.cli import Deprecated, main_guard, run_stage, setup_logging
from hipt.finetune.config import FinetuneConfig

TASKS = ("subtype", "stage", "survival", "response")
SHORTCUTS = {
    "COHORT": "cohort",
    "FEATURES": "features",
    "OUT": "out",
    "ARCH": "model.name",
    "FOLDS": "split.n_folds",
    "EPOCHS": "train.max_epochs",
    "CHECKPOINT4K": "model.checkpoint_4k",
    "SPLITS": "split.official_dir",
}
DEPRECATED = {
    "CHECKPOINT_4K": Deprecated("model.checkpoint_4k", "use CHECKPOINT4K= as in every stage"),
    "MODEL": Deprecated(
        "model.name",
        "in finetune it names an architecture: use ARCH= (MODEL= names a trained model in "
        "heatmap and predict)",
    ),
}


def task_of(argv: Sequence[str]) -> str | None:
    """The task named by ``TASK=`` (Makefile) or ``task=`` (the last one wins)."""
    task = None
    for tok in argv:
        key, sep, value = tok.partition("=")
        if sep and key in ("TASK", "task") and value:
            task = value
    return task


def run(cfg: FinetuneConfig) -> int:
    """Run the stage; imported here so that config errors answer before torch is loaded."""
    from hipt.finetune.runner import run_finetune

    run_finetune(cfg)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Pick ``conf/finetune/<task>.yaml`` from the task argument, then run the stage."""
    args = list(sys.argv[1:] if argv is None else argv)
    task = task_of(args)
    if task not in TASKS:
        setup_logging()
        logging.getLogger("hipt").error(
            "give the task: make finetune TASK=%s (got %r)", "|".join(TASKS), task
        )
        return 2
    args = [a for a in args if not a.startswith("TASK=")] + [f"task={task}"]
    return run_stage(FinetuneConfig, f"finetune/{task}.yaml", run, args, SHORTCUTS, DEPRECATED)


if __name__ == "__main__":
    main_guard(main())
