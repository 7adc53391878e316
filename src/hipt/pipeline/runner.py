"""Run ``make pipeline``: the plan's steps in dependency order, heatmaps, then the report."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hipt.features.store import find_store, read_meta
from hipt.pipeline.config import PipelineConfig, pipeline_hash, validate
from hipt.pipeline.engine import Launcher, Pool, Step, StepRunner, order_steps, wandb_args
from hipt.pipeline.lineage import log_step
from hipt.pipeline.plan import GIVEN, PipelinePlan, as_args
from hipt.pipeline.report import write_reports
from hipt.provenance import sha256_file
from hipt.stage import StageRun
from hipt.tasks.base import Task, task_from_state

log = logging.getLogger(__name__)

#: Stages that run one process per device (Lightning DDP) when a launcher prefix is set.
DISTRIBUTED = ("extract_features", "pretrain")
#: What a pending step's digest is while planning: every step below it will rerun.
PENDING = "pending:"


def fold_predictions(task_dir: Path) -> pd.DataFrame:
    """Every fold's ``predictions.csv`` of a finetune run, with a ``fold`` column."""
    frames = []
    for path in sorted(task_dir.glob("fold_*/predictions.csv")):
        df = pd.read_csv(path, dtype={"patient_id": str, "slide_ids": str})
        frames.append(df.assign(fold=path.parent.name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def fold_task(task_dir: Path) -> Task:
    """The fitted task of a finetune run, from its first fold model's card."""
    from hipt.models import read_card

    card = read_card(task_dir / "fold_0" / "model.safetensors")
    return task_from_state(card.output)


def pick_patients(preds: pd.DataFrame, n: int, task: Task) -> pd.DataFrame:
    """The ``n`` highest- and ``n`` lowest-scored patients (each once), highest first.

    The score is the task's own (:meth:`~hipt.tasks.base.Task.headline`, what the heatmap
    pages sort by): the risk for survival, the probability of responding for response, the
    predicted class' probability otherwise.
    """
    if preds.empty or n == 0:
        return preds.iloc[:0]

    def score(row: pd.Series) -> float:
        return task.headline({k: np.asarray([v]) for k, v in row.items()})[1]

    scored = preds.assign(score=preds.apply(score, axis=1))
    scored = scored.sort_values(["score", "patient_id"], ascending=[False, True])
    picks = pd.concat([scored.head(n), scored.tail(n)]).drop_duplicates("patient_id")
    return picks.reset_index(drop=True)


def listing_digest(folder: Path) -> str:
    """sha256 of a folder's file listing (relative path, size, mtime): what a slide folder is."""
    entries = sorted(
        (p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def given_digests(cfg: PipelineConfig) -> dict[str, str]:
    """Digests of the user's inputs: the cohort CSV's content, the slides' listing or manifest.

    A changed cohort (labels edited, patients added) reruns finetuning; added or replaced
    slides rerun tiling (which itself redoes only the slides that changed).
    """
    digests = {"cohort": sha256_file(cfg.cohort), "slides": slides_digest(Path(cfg.slides))}
    if cfg.external_slides and cfg.external_cohort:
        digests["external_slides"] = slides_digest(Path(cfg.external_slides))
        digests["external_cohort"] = sha256_file(cfg.external_cohort)
    return digests


def slides_digest(slides: Path) -> str:
    """What identifies a slide input: a folder's listing, or a manifest's content."""
    return listing_digest(slides) if slides.is_dir() else sha256_file(slides)


def stain_reference(extract: dict[str, Any]) -> str | None:
    """The stain reference image given to extraction (``extract.stain.reference``), if any."""
    stain = extract.get("stain")
    if isinstance(stain, dict) and stain.get("reference"):
        return str(stain["reference"])
    return None


class PipelineRunner(StepRunner):
    """Orchestrates one ``make pipeline``.

    Args:
        cfg: validated pipeline config.
        launch: how a stage is started (``pipelines.<module>.main`` in or out of process).
        pool: ``n -> Executor`` running finetune steps ``cfg.jobs`` at a time.
    """

    def __init__(
        self,
        cfg: PipelineConfig,
        launch: Launcher,
        pool: Pool | None = None,
        distributed: Launcher | None = None,
    ) -> None:
        super().__init__(Path(cfg.out), launch, force=cfg.force, jobs=cfg.jobs, pool=pool)
        self.distributed = distributed
        self.cfg = cfg
        self.plan = PipelinePlan(cfg)
        self.group = cfg.wandb.group or f"pipeline-{pipeline_hash(cfg)[:8]}"
        self.writers: dict[str, str] = {}  # artifact -> the step that writes it
        self.digests.update(given_digests(cfg))
        self.wandb = wandb_args(cfg.wandb, self.group)

    def launcher(self, step: Step) -> Launcher:
        """Extraction and pretraining through ``distributed`` (e.g. ``srun``) when given."""
        if self.distributed is not None and step.module in DISTRIBUTED:
            return self.distributed
        return self.launch

    def ordered(self) -> list[Step]:
        """The plan's steps in dependency order (upstream filled in)."""
        steps = order_steps(self.plan.steps(), given=GIVEN)
        self.writers.update({item: s.name for s in steps for item in s.writes})
        return steps

    def end(self, step: Step, key: str, argv: list[str], code: int, seconds: float) -> None:
        """Record the finished step, then log its outputs (and inputs) to W&B."""
        super().end(step, key, argv, code, seconds)
        record = self.record(step.name)
        if record.get("status") != "done":  # a tolerated failure: nothing to log
            return
        inputs = {item: self.digests.get(self.writers[item]) for item in step.reads
                  if item in self.writers}  # fmt: skip
        logged = log_step(step, self.cfg.wandb, self.group, key, inputs)
        if logged is not None:
            self.write_record(step.name, {**record, "wandb": logged})

    def explain(self, steps: list[Step]) -> list[dict[str, str]]:
        """Run or skip, and why, for every step, without running anything.

        A step that would run changes its outputs, so every step below it is shown rerunning.
        """
        rows = [self._explain_step(step) for step in steps]
        n = self.cfg.heatmaps
        for task in self.cfg.tasks if n else []:
            if self.digests.get(f"finetune_{task}", PENDING).startswith(PENDING):
                rows.append({"step": f"heatmap_{task}_*", "action": "run",
                             "why": f"after finetune: its {n} highest- and {n} lowest-scored "
                                    "patients"})  # fmt: skip
                continue
            drawn = self.heatmap_steps(task)  # finetune is current: its picks are known
            order_steps([*steps, *drawn], given=GIVEN)
            rows += [self._explain_step(step) for step in drawn]
        return rows

    def _explain_step(self, step: Step) -> dict[str, str]:
        key = self.key(step)
        reason = self.why_run(step, key)
        if reason is None:
            self.digests[step.name] = self.record(step.name)["digest"]
            return {"step": step.name, "action": "skip", "why": "up to date"}
        pending = [u for u in step.upstream if self.digests.get(u, "").startswith(PENDING)]
        if pending:
            reason = f"upstream reruns: {', '.join(pending)}"
        self.digests[step.name] = PENDING + step.name
        return {"step": step.name, "action": "run", "why": reason}

    def heatmap_steps(self, task: str) -> list[Step]:
        """One heatmap per picked patient: its first slide, with the fold that held it out."""
        task_dir = self.plan.finetune_dir(task)
        preds = fold_predictions(task_dir)
        picks = (
            pick_patients(preds, self.cfg.heatmaps, fold_task(task_dir)) if len(preds) else preds
        )
        steps = []
        for row in picks.itertuples(index=False):
            sid = str(row.slide_ids).split(";")[0]
            store = find_store(self.plan.features, sid)
            meta = read_meta(store)
            if meta is None:
                log.warning("pipeline: no store for %s; its heatmap is skipped", sid)
                continue
            out = self.root / "heatmaps" / task / sid
            argv = [
                f"slide={meta.source_path}",
                f"features={store}",
                f"model={self.plan.finetune_dir(task) / str(row.fold)}",
                f"out={out}",
            ]
            for key, path in (
                ("checkpoint256", self.plan.checkpoint256),
                ("checkpoint4k", self.plan.checkpoint4k),
            ):
                if path:
                    argv.append(f"{key}={path}")
            reference = stain_reference(self.cfg.extract)
            if reference:  # the maps recompute patch features with extraction's stain
                argv.append(f"stain_reference={reference}")
            argv += as_args(self.cfg.heatmap)
            steps.append(
                Step(
                    f"heatmap_{task}_{sid}",
                    "heatmap",
                    "heatmap",
                    argv,
                    out,
                    "index.html",
                    policy=["overwrite=true"],
                    reads=("feats4k", f"model:{task}"),
                    writes=(f"heatmap:{task}:{sid}",),
                    tolerate="optional",
                )
            )
        return steps

    def run(self) -> dict[str, Any]:
        """Every step (finetune ``jobs`` at a time), the heatmaps, then the reports."""
        t0 = time.perf_counter()
        steps = self.ordered()
        finetunes = [s for s in steps if s.module == "finetune"]
        parallel = self.jobs > 1
        for step in steps:
            if step.module == "finetune" and parallel:
                continue
            if parallel and set(step.upstream) & {s.name for s in finetunes}:
                self.run_parallel(finetunes, self.wandb)  # everything they need is done
                parallel = False
            self.run_step(step, self.wandb)
        if parallel:
            self.run_parallel(finetunes, self.wandb)
        drawn: dict[str, list[Step]] = {}
        for task in self.cfg.tasks:
            drawn[task] = self.heatmap_steps(task)
            order_steps([*steps, *drawn[task]], given=GIVEN)  # their upstream steps
            self.writers.update({item: s.name for s in drawn[task] for item in s.writes})
            for step in drawn[task]:
                self.run_step(step, self.wandb)
        total = time.perf_counter() - t0
        return write_reports(self, steps, drawn, total)


def print_plan(rows: list[dict[str, str]]) -> str:
    """The dry-run table as text."""
    width = max(len(r["step"]) for r in rows)
    lines = [f"{'step':<{width}}  {'action':<6}  why", "-" * (width + 30)]
    lines += [f"{r['step']:<{width}}  {r['action']:<6}  {r['why']}" for r in rows]
    return "\n".join(lines)


def run_pipeline(
    cfg: PipelineConfig,
    launch: Launcher,
    pool: Pool | None = None,
    distributed: Launcher | None = None,
) -> int:
    """Stage entry of ``pipelines.pipeline``: validate, plan (and stop on ``dry_run``), run.

    Args:
        cfg: the pipeline config.
        launch: how a stage starts (in this process, or as a child process).
        pool: executor factory for finetune runs side by side.
        distributed: how extraction and pretraining start when ``cfg.launcher`` is set (a
            command prefix such as ``srun``: one process per device, on every node).
    """
    validate(cfg)
    runner = PipelineRunner(cfg, launch, pool, distributed)
    if cfg.dry_run:
        table = print_plan(runner.explain(runner.ordered()))
        log.info("pipeline: dry run, nothing runs:\n%s", table)
        print(table)
        return 0
    with StageRun("pipeline", cfg, cfg.out, chash=pipeline_hash(cfg)) as run:
        outputs = runner.run()
        run.done({**outputs, "problems": runner.problems})
    log.info("pipeline: done; report in %s", outputs["report_md"])
    for problem in runner.problems:
        log.error("pipeline: %s", problem)
    return 1 if runner.problems else 0
