"""Run the demo: cohort, then every stage through its public entry, skipping up-to-date ones.

A step is up to date when ``<out>/provenance/<step>.json`` says it finished with the same key
and its outputs are still the ones it recorded. The key hashes the step's arguments and the
``run.json`` of every step it reads from, so a changed setting or a rerun upstream stage
reruns everything below it, and nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from hipt.demo.cohort import (
    GENERATOR_VERSION,
    CohortFiles,
    generate_cohort,
    is_current,
    settings_key,
)
from hipt.demo.config import DemoConfig, demo_hash, validate
from hipt.demo.report import StepTiming, write_report
from hipt.demo.steps import BACKBONE, EXTERNAL, STAGE_FOLDERS, Plan, Step
from hipt.errors import HiptError
from hipt.io import atomic_write_json
from hipt.provenance import sha256_file
from hipt.stage import StageRun

log = logging.getLogger(__name__)

#: ``(module, argv) -> exit code``: runs ``pipelines.<module>`` (in-process or as a process).
Launcher = Callable[[str, list[str]], int]
#: ``n_workers -> Executor`` for steps that run side by side.
Pool = Callable[[int], Executor]


def spawn_pool(n: int) -> Executor:
    """``n`` fresh worker processes, each importing the stages once and running several steps.

    Spawned, not forked: a fork would copy this process's OpenMP and lock state.
    """
    return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))


def timed_launch(launch: Launcher, module: str, argv: list[str]) -> tuple[int, float]:
    """``(exit code, wall seconds)`` of one stage run (module level: it runs in workers)."""
    t0 = time.perf_counter()
    code = int(launch(module, argv))
    return code, time.perf_counter() - t0


class StageFailed(HiptError):
    """A stage of the demo returned a non-zero exit code; its code becomes the demo's."""

    def __init__(self, step: str, code: int, out: Path) -> None:
        self.exit_code = code
        super().__init__(
            f"demo: stage {step} failed with exit code {code} (its log is above; outputs in "
            f"{out}); fix it and rerun: finished stages are kept"
        )


def _digest(step: Step) -> str | None:
    """Fingerprint of a finished step's outputs: sha256 of its ``run.json``."""
    run_json = step.out / "run.json"
    return sha256_file(run_json) if run_json.is_file() else None


class DemoRunner:
    """Orchestrates one ``make demo``.

    Args:
        cfg: validated demo config.
        launch: how a stage is started (injected: ``src`` never imports ``pipelines``); with
            ``cfg.jobs > 1`` it must be picklable (a module-level function).
        pool: ``n -> Executor`` running the finetune steps ``cfg.jobs`` at a time (default:
            :func:`spawn_pool`).
    """

    def __init__(self, cfg: DemoConfig, launch: Launcher, pool: Pool | None = None) -> None:
        self.cfg, self.launch = cfg, launch
        self.pool = pool or spawn_pool
        self.root = Path(cfg.out)
        self.prov = self.root / "provenance"
        self.digests: dict[str, str] = {}
        self.timings: list[StepTiming] = []
        self.walls: dict[str, float] = {}  # wall time of stages whose steps ran side by side
        self.group = cfg.wandb.group or f"demo-{demo_hash(cfg)[:8]}"

    def _record(self, name: str) -> dict[str, Any]:
        try:
            return json.loads((self.prov / f"{name}.json").read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def _write(self, name: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.prov / f"{name}.json", record)

    def key(self, step: Step) -> str:
        """sha256 of the step's arguments (W&B ones excluded) and its upstream outputs."""
        upstream = {u: self.digests.get(u) for u in step.upstream}
        blob = json.dumps({"module": step.module, "argv": step.argv, "upstream": upstream})
        return hashlib.sha256(blob.encode()).hexdigest()

    def up_to_date(self, step: Step, key: str) -> bool:
        """Finished earlier with ``key``, completion marker present, outputs unchanged."""
        rec = self._record(step.name)
        return (
            not self.cfg.force
            and rec.get("status") == "done"
            and rec.get("key") == key
            and (step.out / step.done_file).exists()
            and rec.get("digest") == _digest(step)
        )

    def policy(self, step: Step, key: str) -> list[str]:
        """How to run a pretrain step: resume an interrupted identical run, else start over."""
        if step.module != "pretrain":
            return step.policy
        rec = self._record(step.name)
        last = step.out / "checkpoints" / "last.ckpt"
        interrupted = rec.get("status") == "running" and rec.get("key") == key
        if interrupted and last.is_file() and not (step.out / BACKBONE).is_file():
            log.info("%s: resuming the interrupted run from %s", step.name, last)
            return ["resume=true"]
        return ["overwrite=true"]

    def begin(self, step: Step, wandb_args: list[str]) -> tuple[str, list[str]] | None:
        """Skip an up-to-date step (None), or mark it running and return ``(key, argv)``."""
        key = self.key(step)
        if self.up_to_date(step, key):
            rec = self._record(step.name)
            self.digests[step.name] = rec["digest"]
            log.info("demo: %s is up to date (%s); skipped", step.name, step.out)
            self.timings.append(StepTiming(step.name, step.stage, "skipped", 0.0, rec["seconds"]))
            return None
        argv = [*step.argv, *self.policy(step, key), *wandb_args]
        log.info("demo: running %s: pipelines.%s %s", step.name, step.module, " ".join(argv))
        self._write(step.name, {"status": "running", "key": key, "argv": argv})
        return key, argv

    def run_step(self, step: Step, wandb_args: list[str]) -> None:
        """Skip or run one step; raise :class:`StageFailed` on a non-zero exit code."""
        started = self.begin(step, wandb_args)
        if started is not None:
            key, argv = started
            code, seconds = timed_launch(self.launch, step.module, argv)
            self.end(step, key, argv, code, seconds)

    def run_parallel(self, steps: list[Step], wandb_args: list[str]) -> None:
        """Run independent steps ``cfg.jobs`` at a time, each in a worker process.

        Each finished step is recorded at once; after a failure no further step starts, the
        running ones finish (and are recorded), then the first failure is raised.
        """
        todo = [(s, started) for s in steps if (started := self.begin(s, wandb_args))]
        if not todo:
            return
        failure: StageFailed | None = None
        start = time.perf_counter()
        stage = todo[0][0].stage
        with self.pool(min(self.cfg.jobs, len(todo))) as pool:
            futures = {
                pool.submit(timed_launch, self.launch, s.module, argv): (s, key, argv)
                for s, (key, argv) in todo
            }
            for future in as_completed(futures):
                if future.cancelled():  # never started: stays "running", reruns next time
                    continue
                step, key, argv = futures[future]
                code, seconds = future.result()
                try:
                    self.end(step, key, argv, code, seconds)
                    log.info("demo: %s finished in %.1f s", step.name, seconds)
                except StageFailed as err:
                    failure = failure or err
                    for other in futures:
                        other.cancel()
        self.walls[stage] = self.walls.get(stage, 0.0) + time.perf_counter() - start
        if failure is not None:
            raise failure

    def end(self, step: Step, key: str, argv: list[str], code: int, seconds: float) -> None:
        """Record a finished step; raise :class:`StageFailed` when it failed."""
        if code != 0 or not (step.out / step.done_file).exists():
            self._write(step.name, {"status": "failed", "key": key, "argv": argv, "code": code})
            raise StageFailed(step.name, code or 1, step.out)
        digest = _digest(step) or key
        self.digests[step.name] = digest
        self._write(
            step.name,
            {
                "status": "done",
                "key": key,
                "argv": argv,
                "seconds": round(seconds, 2),
                "digest": digest,
            },
        )
        self.timings.append(StepTiming(step.name, step.stage, "ran", seconds, seconds))

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
        self._write(
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
