"""A cohort through every stage: ``python -m pipelines.pipeline SLIDES= COHORT= OUT= TASKS=``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hipt.cli import main_guard, run_stage
from hipt.pipeline.config import PipelineConfig
from pipelines.launch import as_process, in_process, with_prefix

SHORTCUTS = {
    "SLIDES": "slides",
    "COHORT": "cohort",
    "OUT": "out",
    "TASKS": "tasks",
    "CHECKPOINT256": "checkpoint256",
    "CHECKPOINT4K": "checkpoint4k",
    "MODEL256": "model256",
    "PRETRAIN": "pretrain",
    "ANNOTATIONS": "annotations",
    "EXTERNAL_SLIDES": "external_slides",
    "EXTERNAL_COHORT": "external_cohort",
}


def task_list(argv: Sequence[str]) -> list[str]:
    """``TASKS=subtype,survival`` (make's spelling) -> ``tasks=[subtype,survival]``."""
    out = []
    for tok in argv:
        key, sep, value = tok.partition("=")
        if sep and key in ("TASKS", "tasks") and not value.startswith("["):
            tok = f"tasks=[{value}]"
        out.append(tok)
    return out


def run(cfg: PipelineConfig) -> int:
    """Run (or, with ``dry_run=true``, plan) every step; imported late: config errors first."""
    from hipt.pipeline.runner import run_pipeline

    distributed = with_prefix(cfg.launcher) if cfg.launcher else None
    code = run_pipeline(cfg, as_process if cfg.isolate else in_process, distributed=distributed)
    if code == 0 and not cfg.dry_run:
        with open(f"{cfg.out}/report.md", encoding="utf-8") as fh:
            sys.stdout.write(fh.read())
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run with ``key=value`` overrides of conf/pipeline.yaml; return the exit code."""
    args = task_list(list(sys.argv[1:] if argv is None else argv))
    return run_stage(PipelineConfig, "pipeline.yaml", run, args, shortcuts=SHORTCUTS)


if __name__ == "__main__":
    main_guard(main())
