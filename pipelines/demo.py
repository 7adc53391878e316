"""The whole pipeline on an embedded cohort: ``python -m pipelines.demo [key=value ...]``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hipt.cli import main_guard, run_stage
from hipt.demo.config import DemoConfig
from pipelines.launch import as_process, in_process

__all__ = ["as_process", "in_process", "main", "run"]

SHORTCUTS = {"OUT": "out", "SEED": "seed"}


def run(cfg: DemoConfig) -> int:
    """Run every stage, then print the report table."""
    from hipt.demo.runner import run_demo

    code = run_demo(cfg, as_process if cfg.isolate else in_process)
    report = f"{cfg.out}/report.md"
    with open(report, encoding="utf-8") as fh:
        sys.stdout.write(fh.read())
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo with ``key=value`` overrides of conf/demo.yaml; return the exit code."""
    return run_stage(DemoConfig, "demo.yaml", run, argv, shortcuts=SHORTCUTS)


if __name__ == "__main__":
    main_guard(main())
