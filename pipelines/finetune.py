"""``make finetune TASK=subtype|stage|survival|response COHORT=... FEATURES=... OUT=...``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from hipt.cli import main_guard, run_stage, setup_logging
from hipt.finetune import FinetuneConfig, run_finetune

TASKS = ("subtype", "stage", "survival", "response")
SHORTCUTS = {
    "COHORT": "cohort",
    "FEATURES": "features",
    "OUT": "out",
    "MODEL": "model.name",
    "FOLDS": "split.n_folds",
    "EPOCHS": "train.max_epochs",
    "CHECKPOINT_4K": "model.checkpoint_4k",
    "SPLITS": "split.official_dir",
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
    """Run the stage."""
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
    return run_stage(FinetuneConfig, f"finetune/{task}.yaml", run, args, shortcuts=SHORTCUTS)


if __name__ == "__main__":
    main_guard(main())
