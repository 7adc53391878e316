"""Run the demo: cohort, then every stage through its public entry, skipping up-to-date ones.

A step is up to date when ``<out>/provenance/<step>.json`` says it finished with the same key
and its outputs are still the ones it recorded. The key hashes the step's arguments and the
``run.json`` of every step it reads from, so a changed setting or a rerun upstream stage
reruns everything below it, and nothing else.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

from hipt.demo.cohort import (
    GENERATOR_VERSION,
    CohortFiles,
    generate_cohort,
    is_current,
    settings_key,
)
from hipt.demo.config import DemoConfig, demo_hash, validate
from hipt.demo.report import write_report
from hipt.demo.steps import EXTERNAL, STAGE_FOLDERS, Plan
from hipt.pipeline.engine import Launcher, Pool, StageFailed, StepRunner, StepTiming
from hipt.provenance import sha256_file
from hipt.stage import StageRun

__all__ = ["DemoRunner", "StageFailed", "run_demo"]

log = logging.getLogger(__name__)


class DemoRunner(StepRunner):
    """Orchestrates one ``make demo``: the cohorts, then the demo's steps on the step engine.

    Args:
        cfg: validated demo config.
        launch: how a stage is started (injected: ``src`` never imports ``pipelines``); with
            ``cfg.jobs > 1`` it must be picklable (a module-level function).
        pool: ``n -> Executor`` running the finetune steps ``cfg.jobs`` at a time (default:
            :func:`~hipt.pipeline.engine.spawn_pool`).
    """

    def __init__(self, cfg: DemoConfig, launch: Launcher, pool: Pool | None = None) -> None:
        super().__init__(Path(cfg.out), launch, force=cfg.force, jobs=cfg.jobs, pool=pool,
                         name="demo")  # fmt: skip
        self.cfg = cfg
        self.group = cfg.wandb.group or f"demo-{demo_hash(cfg)[:8]}"

    def drop_stale_outputs(self) -> None:
        """Remove the stage folders and step records made from an earlier cohort.

        A new cohort (other settings, seed or ``force``) makes every one of them stale, and
        some would not be replaced but read beside the new ones (the stores of slides the new
        cohort lacks would reach pretrain-4k).
        """
        stale = [self.root / name for name in STAGE_FOLDERS if (self.root / name).exists()]
        if stale:
            log.info(
                "demo: new cohort; removing the outputs made from the old one: %s",
                ", ".join(str(p) for p in stale),
            )
        for path in stale:
            shutil.rmtree(path)
        for record in self.prov.glob("*.json"):
            record.unlink()

    def cohort(self) -> Plan:
        """Generate (or reuse) the cohort and the external one; return the step plan."""
        t0 = time.perf_counter()
        key = settings_key(self.cfg.cohort, self.cfg.seed)
        files = CohortFiles(self.root / "cohort")
        reused = not self.cfg.force and is_current(files, key)
        if not reused:
            self.drop_stale_outputs()
        generate_cohort(files.root, self.cfg.cohort, self.cfg.seed, force=self.cfg.force)
        self._record_cohort("cohort", files, reused, t0)
        self.digests["slides"] = self.digests["cohort"]  # the pipeline's given inputs
        external = self.external_cohort() if self.cfg.external else None
        return Plan(self.cfg, files, self.group, external)

    def external_cohort(self) -> CohortFiles:
        """The independent cohort: other patients, no sample slide.

        Regenerated, and its stage outputs removed, when its seed or settings changed.
        """
        t0 = time.perf_counter()
        seed = self.cfg.seed + 1 if self.cfg.external_seed is None else self.cfg.external_seed
        settings = dataclasses.replace(self.cfg.cohort, include_sample=False)
        files = CohortFiles(self.root / EXTERNAL / "cohort")
        reused = not self.cfg.force and is_current(files, settings_key(settings, seed))
        if not reused and (self.root / EXTERNAL).exists():
            log.info("demo: new external cohort; removing %s", self.root / EXTERNAL)
            shutil.rmtree(self.root / EXTERNAL)
        generate_cohort(files.root, settings, seed, force=self.cfg.force)
        self._record_cohort("external_cohort", files, reused, t0)
        return files

    def _record_cohort(self, name: str, files: CohortFiles, reused: bool, t0: float) -> None:
        info = files.info()
        status, seconds = ("skipped", 0.0) if reused else ("ran", time.perf_counter() - t0)
        self.timings.append(StepTiming(name, "cohort", status, seconds, info["seconds"]))
        self.digests[name] = sha256_file(files.info_json)
        self.write_record(
            name,
            {
                "status": "done",
                "key": info["key"],
                "seconds": info["seconds"],
                "version": GENERATOR_VERSION,
                "digest": self.digests[name],
            },
        )

    def run(self) -> Path:
        """Every step in order, then the report; return ``report.md``."""
        t0 = time.perf_counter()
        plan = self.cohort()
        parallel = []
        for step in plan.early():
            if step.module == "finetune" and self.cfg.jobs > 1:
                parallel.append(step)  # independent of each other; their inputs are done
            else:
                self.run_step(step, plan.wandb)
        self.run_parallel(parallel, plan.wandb)
        for step in [*plan.external(), *plan.late()]:
            self.run_step(step, plan.wandb)
        total = time.perf_counter() - t0
        return write_report(self.root, plan, self.timings, total, self.group, self.walls)


def run_demo(cfg: DemoConfig, launch: Launcher, pool: Pool | None = None) -> int:
    """Stage entry of ``pipelines.demo``: validate, lock ``out``, run every step, report."""
    validate(cfg)
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
        os.environ["OMP_NUM_THREADS"] = str(cfg.torch_threads)  # for isolate=true children
    with StageRun("demo", cfg, cfg.out, chash=demo_hash(cfg)) as run:
        report = DemoRunner(cfg, launch, pool).run()
        run.done({"report": str(report)})
    log.info("demo: done; report in %s", report)
    return 0
