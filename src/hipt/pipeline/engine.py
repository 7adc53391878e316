"""The step engine of ``make pipeline`` and ``make demo``: order, skip, run, record.

A step is one stage run (``pipelines.<module> key=value ...``). Steps declare the artifacts they
read and the one they write; the engine orders them from that (a topological sort, so no use
hard-codes an order) and derives each step's upstream steps.

A step is up to date when ``<root>/provenance/<step>.json`` says it finished with the same key
and its outputs are still the ones it recorded. The key hashes the step's arguments and the
``run.json`` of every step it reads from, so a changed setting or a rerun upstream stage
reruns everything below it, and nothing else. A killed run leaves the step ``running``: the
next run does it again (pretraining resumes from its last checkpoint).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from hipt.config import WandbConfig
from hipt.errors import ConfigError, HiptError
from hipt.io import atomic_write_json
from hipt.provenance import sha256_file

log = logging.getLogger(__name__)

#: ``(module, argv) -> exit code``: runs ``pipelines.<module>`` (in-process or as a process).
Launcher = Callable[[str, list[str]], int]
#: ``n_workers -> Executor`` for steps that run side by side.
Pool = Callable[[int], Executor]
#: What pretraining exports (documented stage output); a pretrain step is done when it exists.
BACKBONE = "backbone.safetensors"


def wandb_args(cfg: WandbConfig, group: str) -> list[str]:
    """The ``wandb.*`` arguments every stage of one run gets (same project, one group)."""
    args = [f"wandb.mode={cfg.mode}", f"wandb.project={cfg.project}", f"wandb.group={group}"]
    return [*args, f"wandb.entity={cfg.entity}"] if cfg.entity else args


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


@dataclasses.dataclass
class Step:
    """One stage run.

    Attributes:
        name: unique step name, also its provenance file (``provenance/<name>.json``).
        stage: report group (``tile``, ``pretrain-256``, ``extract``, ...).
        module: ``pipelines.<module>`` entry point.
        argv: ``key=value`` arguments that define the result (hashed into the step key).
        out: the stage's output folder.
        done_file: the stage's own completion marker inside ``out``.
        upstream: names of the steps whose outputs this one reads (derived from ``reads`` by
            :func:`order_steps` when those are declared).
        policy: extra arguments that say *how* to run, not what (e.g. ``overwrite=true``).
        reads: artifacts the step reads (``tiles``, ``feats256``, ``vit4k``, ...).
        writes: the artifacts it makes.
        tolerate: ``partial``: exit code 1 with the completion file written means some items
            (slides) failed and were skipped, the rest is usable: go on; ``optional``: a
            failure is recorded and the run goes on (one heatmap); ``""``: a failure stops.
    """

    name: str
    stage: str
    module: str
    argv: list[str]
    out: Path
    done_file: str
    upstream: list[str] = dataclasses.field(default_factory=list)
    policy: list[str] = dataclasses.field(default_factory=list)
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    tolerate: str = ""


def order_steps(steps: Iterable[Step], given: Iterable[str] = ()) -> list[Step]:
    """Steps in an order where each runs after every step that writes what it reads.

    ``upstream`` of each step is set to those writers, and to the given artifacts it reads (by
    their own name: the runner keeps a digest of each, so an edited cohort CSV reruns the steps
    that read it). Ties keep the declared order.

    Args:
        steps: the steps, in any order.
        given: artifacts that exist before any step (the user's slides and cohort).

    Raises:
        ConfigError: an artifact read but made by no step and not given, two steps writing
            one artifact, or a cycle.
    """
    steps = list(steps)
    writer: dict[str, str] = {}
    for step in steps:
        for artifact in step.writes:
            if artifact in writer:
                raise ConfigError(
                    f"pipeline: {writer[artifact]} and {step.name} both write '{artifact}'"
                )
            writer[artifact] = step.name
    known = set(given)
    for step in steps:
        missing = [a for a in step.reads if a not in writer and a not in known]
        if missing:
            raise ConfigError(
                f"pipeline: step {step.name} reads {', '.join(missing)}, which no step makes"
            )
        step.upstream = list(dict.fromkeys(writer.get(a, a) for a in step.reads))
    ordered: list[Step] = []
    placed: set[str] = set()
    todo = list(steps)
    while todo:
        ready = [s for s in todo if set(s.upstream) - known <= placed]
        if not ready:
            names = ", ".join(s.name for s in todo)
            raise ConfigError(f"pipeline: steps {names} read each other's outputs (a cycle)")
        ordered.append(ready[0])
        placed.add(ready[0].name)
        todo.remove(ready[0])
    return ordered


@dataclasses.dataclass
class StepTiming:
    """How long a step took.

    Attributes:
        name: step name.
        stage: report group.
        status: ``ran`` or ``skipped`` (up to date).
        seconds: wall time in this invocation.
        last_run_seconds: wall time of the run that made the current outputs.
    """

    name: str
    stage: str
    status: str
    seconds: float
    last_run_seconds: float


class StageFailed(HiptError):
    """A step's stage returned a non-zero exit code; its code becomes the runner's."""

    def __init__(self, step: str, code: int, out: Path, runner: str = "pipeline") -> None:
        self.exit_code = code
        super().__init__(
            f"{runner}: stage {step} failed with exit code {code} (its log is above; outputs "
            f"in {out}); fix it and rerun: finished stages are kept"
        )


def output_digest(step: Step) -> str | None:
    """Fingerprint of a finished step's outputs: sha256 of its ``run.json``."""
    run_json = step.out / "run.json"
    return sha256_file(run_json) if run_json.is_file() else None


class StepRunner:
    """Runs steps under ``root``, skipping the up-to-date ones and recording the others.

    Args:
        root: folder holding ``provenance/<step>.json``.
        launch: how a stage is started (injected: ``src`` never imports ``pipelines``); with
            ``jobs > 1`` it must be picklable (a module-level function).
        force: rerun every step.
        jobs: steps run side by side by :meth:`run_parallel`.
        pool: ``n -> Executor`` for :meth:`run_parallel` (default: :func:`spawn_pool`).
        name: what the log lines and errors call this runner (``pipeline``, ``demo``).
    """

    def __init__(
        self,
        root: Path,
        launch: Launcher,
        *,
        force: bool = False,
        jobs: int = 1,
        pool: Pool | None = None,
        name: str = "pipeline",
    ) -> None:
        self.root, self.launch, self.force, self.jobs = Path(root), launch, force, jobs
        self.pool = pool or spawn_pool
        self.name = name
        self.prov = self.root / "provenance"
        self.digests: dict[str, str] = {}
        self.timings: list[StepTiming] = []
        self.walls: dict[str, float] = {}  # wall time of stages whose steps ran side by side
        self.problems: list[str] = []  # tolerated failures: the run goes on, exits 1

    def launcher(self, step: Step) -> Launcher:
        """How ``step`` is started (one launcher for all steps here; subclasses may choose)."""
        return self.launch

    def record(self, name: str) -> dict[str, Any]:
        """The provenance record of step ``name`` (empty when it never ran)."""
        try:
            return json.loads((self.prov / f"{name}.json").read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def write_record(self, name: str, record: dict[str, Any]) -> None:
        """Write the provenance record of step ``name`` atomically."""
        atomic_write_json(self.prov / f"{name}.json", record)

    def key(self, step: Step) -> str:
        """sha256 of the step's arguments (W&B ones excluded) and its upstream outputs."""
        upstream = {u: self.digests.get(u) for u in step.upstream}
        blob = json.dumps({"module": step.module, "argv": step.argv, "upstream": upstream})
        return hashlib.sha256(blob.encode()).hexdigest()

    def why_run(self, step: Step, key: str) -> str | None:
        """Why ``step`` must run (one phrase), or None when it is up to date."""
        rec = self.record(step.name)
        if self.force:
            return "force=true"
        if not rec:
            return "never ran"
        if rec.get("status") != "done":
            return f"last run {rec.get('status', 'unknown')}"
        if rec.get("key") != key:
            changed = [
                u for u in step.upstream if self.digests.get(u) != rec.get("upstream", {}).get(u)
            ]
            if changed and "upstream" in rec:
                return f"upstream changed: {', '.join(changed)}"
            if "argv_hash" not in rec:
                return "key changed (recorded by an earlier version)"
            return (
                "settings changed" if rec.get("argv_hash") != _argv_hash(step) else "inputs changed"
            )
        if not (step.out / step.done_file).exists():
            return f"{step.out / step.done_file} is missing"
        if rec.get("digest") != output_digest(step):
            return f"{step.out / 'run.json'} changed since"
        return None

    def policy(self, step: Step, key: str) -> list[str]:
        """How to run a pretrain step: resume an interrupted identical run, else start over."""
        if step.module != "pretrain":
            return step.policy
        rec = self.record(step.name)
        last = step.out / "checkpoints" / "last.ckpt"
        interrupted = rec.get("status") == "running" and rec.get("key") == key
        if interrupted and last.is_file() and not (step.out / BACKBONE).is_file():
            log.info("%s: resuming the interrupted run from %s", step.name, last)
            return ["resume=true"]
        return ["overwrite=true"]

    def begin(self, step: Step, extra_args: list[str]) -> tuple[str, list[str]] | None:
        """Skip an up-to-date step (None), or mark it running and return ``(key, argv)``."""
        key = self.key(step)
        reason = self.why_run(step, key)
        if reason is None:
            rec = self.record(step.name)
            self.digests[step.name] = rec["digest"]
            log.info("%s: %s is up to date (%s); skipped", self.name, step.name, step.out)
            if rec.get("partial"):  # its failed items are still failed
                self.problems.append(partial_problem(step))
            self.timings.append(StepTiming(step.name, step.stage, "skipped", 0.0, rec["seconds"]))
            return None
        argv = [*step.argv, *self.policy(step, key), *extra_args]
        log.info(
            "%s: running %s (%s): pipelines.%s %s",
            self.name,
            step.name,
            reason,
            step.module,
            " ".join(argv),
        )
        self.write_record(step.name, {"status": "running", "key": key, "argv": argv})
        return key, argv

    def run_step(self, step: Step, extra_args: list[str]) -> None:
        """Skip or run one step; raise :class:`StageFailed` on a non-zero exit code."""
        started = self.begin(step, extra_args)
        if started is not None:
            key, argv = started
            code, seconds = timed_launch(self.launcher(step), step.module, argv)
            self.end(step, key, argv, code, seconds)

    def run_parallel(self, steps: list[Step], extra_args: list[str]) -> None:
        """Run independent steps ``jobs`` at a time, each in a worker process.

        Each finished step is recorded at once; after a failure no further step starts, the
        running ones finish (and are recorded), then the first failure is raised.
        """
        todo = [(s, started) for s in steps if (started := self.begin(s, extra_args))]
        if not todo:
            return
        failure: StageFailed | None = None
        start = time.perf_counter()
        stage = todo[0][0].stage
        with self.pool(min(self.jobs, len(todo))) as pool:
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
                    log.info("%s: %s finished in %.1f s", self.name, step.name, seconds)
                except StageFailed as err:
                    failure = failure or err
                    for other in futures:
                        other.cancel()
        self.walls[stage] = self.walls.get(stage, 0.0) + time.perf_counter() - start
        if failure is not None:
            raise failure

    def end(self, step: Step, key: str, argv: list[str], code: int, seconds: float) -> None:
        """Record a finished step; raise :class:`StageFailed` when it failed (see ``tolerate``)."""
        done = (step.out / step.done_file).exists()
        partial = code == 1 and done and step.tolerate == "partial"
        if partial:
            self.problems.append(partial_problem(step))
            log.warning("%s: %s finished, some items failed; going on with the others",
                        self.name, step.name)  # fmt: skip
        elif code != 0 or not done:
            self.write_record(step.name, {"status": "failed", "key": key, "argv": argv,
                                          "code": code})  # fmt: skip
            if step.tolerate == "optional":
                self.problems.append(f"{step.name}: failed with exit code {code} (log above)")
                log.warning("%s: %s failed; going on", self.name, step.name)
                return
            raise StageFailed(step.name, code or 1, step.out, self.name)
        digest = output_digest(step) or key
        self.digests[step.name] = digest
        self.write_record(
            step.name,
            {
                "status": "done",
                "key": key,
                "argv": argv,
                "argv_hash": _argv_hash(step),
                "upstream": {u: self.digests.get(u) for u in step.upstream},
                "seconds": round(seconds, 2),
                "digest": digest,
                "partial": partial,
            },
        )
        self.timings.append(StepTiming(step.name, step.stage, "ran", seconds, seconds))


def partial_problem(step: Step) -> str:
    """The run summary's line for a step whose stage skipped some failed items."""
    return f"{step.name}: some items failed and were skipped (see {step.out}/summary.json)"


def _argv_hash(step: Step) -> str:
    return hashlib.sha256(json.dumps([step.module, step.argv]).encode()).hexdigest()
