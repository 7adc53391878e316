"""Run the demo: cohort, then every stage through its public entry, skipping up-to-date ones.

A step is up to date when ``<out>/provenance/<step>.json`` says it finished with the same key
and its outputs are still the ones it recorded. The key hashes the step's arguments and the
``run.json`` of every step it reads from, so a changed setting or a rerun upstream stage
reruns everything below it, and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
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
from hipt.demo.steps import BACKBONE, Plan, Step
from hipt.errors import HiptError
from hipt.io import atomic_write_json, clean_stale_tmp
from hipt.lock import RunLock
from hipt.provenance import sha256_file

log = logging.getLogger(__name__)

#: ``(module, argv) -> exit code``: runs ``pipelines.<module>`` (in-process or as a process).
Launcher = Callable[[str, list[str]], int]


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
        launch: how a stage is started (injected: ``src`` never imports ``pipelines``).
    """

    def __init__(self, cfg: DemoConfig, launch: Launcher) -> None:
        self.cfg, self.launch = cfg, launch
        self.root = Path(cfg.out)
        self.prov = self.root / "provenance"
        self.digests: dict[str, str] = {}
        self.timings: list[StepTiming] = []
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

    def run_step(self, step: Step, wandb_args: list[str]) -> None:
        """Skip or run one step; raise :class:`StageFailed` on a non-zero exit code."""
        key = self.key(step)
        if self.up_to_date(step, key):
            rec = self._record(step.name)
            self.digests[step.name] = rec["digest"]
            log.info("demo: %s is up to date (%s); skipped", step.name, step.out)
            self.timings.append(StepTiming(step.name, step.stage, "skipped", 0.0, rec["seconds"]))
            return
        argv = [*step.argv, *self.policy(step, key), *wandb_args]
        log.info("demo: running %s: pipelines.%s %s", step.name, step.module, " ".join(argv))
        self._write(step.name, {"status": "running", "key": key, "argv": argv})
        t0 = time.perf_counter()
        code = int(self.launch(step.module, argv))
        seconds = time.perf_counter() - t0
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

    def cohort(self) -> Plan:
        """Generate (or reuse) the cohort; return the step plan that uses it."""
        t0 = time.perf_counter()
        key = settings_key(self.cfg.cohort, self.cfg.seed)
        files = CohortFiles(self.root / "cohort")
        reused = not self.cfg.force and is_current(files, key)
        generate_cohort(files.root, self.cfg.cohort, self.cfg.seed, force=self.cfg.force)
        info = files.info()
        status, seconds = ("skipped", 0.0) if reused else ("ran", time.perf_counter() - t0)
        self.timings.append(StepTiming("cohort", "cohort", status, seconds, info["seconds"]))
        self.digests["cohort"] = sha256_file(files.info_json)
        self._write(
            "cohort",
            {
                "status": "done",
                "key": key,
                "seconds": info["seconds"],
                "version": GENERATOR_VERSION,
                "digest": self.digests["cohort"],
            },
        )
        return Plan(self.cfg, files, self.group)

    def run(self) -> Path:
        """Every step in order, then the report; return ``report.md``."""
        t0 = time.perf_counter()
        plan = self.cohort()
        for step in plan.early():
            self.run_step(step, plan.wandb)
        for step in plan.late():
            self.run_step(step, plan.wandb)
        return write_report(self.root, plan, self.timings, time.perf_counter() - t0, self.group)


def run_demo(cfg: DemoConfig, launch: Launcher) -> int:
    """Stage entry of ``pipelines.demo``: validate, lock ``out``, run every step, report."""
    validate(cfg)
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
        os.environ["OMP_NUM_THREADS"] = str(cfg.torch_threads)  # for isolate=true children
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    with RunLock(root):
        clean_stale_tmp(root)
        report = DemoRunner(cfg, launch).run()
    log.info("demo: done; report in %s", report)
    return 0
