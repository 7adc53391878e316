"""The predict stage: check provenance, stream patients through every model, write the results.

Ensemble rule: each fold's model predicts every patient; the ensemble's class probabilities,
risk, hazards and survival per bin are the means over the folds, and its predicted class is
decided from those means as one model decides from its own (``Task.combine``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hipt.errors import HiptError, one_line
from hipt.features import FeatureStore, find_store, open_store
from hipt.features.store import provenance_problem
from hipt.models.runtime import autocast_context, describe_device, resolve_device, set_fp32_matmul
from hipt.models.slide import SlideModel, load_slide_models
from hipt.predict.cohort import PredictCohort, read_cohort
from hipt.predict.config import PredictConfig, predict_hash, validate
from hipt.predict.outputs import ENSEMBLE, write_results
from hipt.stage import StageRun, outputs_current
from hipt.tasks.base import Task, task_from_state

log = logging.getLogger(__name__)
STAGE = "predict"


@dataclasses.dataclass
class SlideStatus:
    """One slide's store: open and usable, or why not."""

    slide_id: str
    patient_id: str
    store: FeatureStore | None = None
    error: str | None = None


@dataclasses.dataclass
class Prediction:
    """Every model's outputs for one bag (a patient, or one slide), plus region attention.

    Attributes:
        outputs: model name (and ``ensemble``) -> the task's prediction columns (length 1).
        attention: ``[M]`` region attention, mean over the models.
    """

    outputs: dict[str, dict[str, np.ndarray]]
    attention: np.ndarray


def open_slides(cohort: PredictCohort, features: Path) -> list[SlideStatus]:
    """Every slide's store: a missing, incomplete or unreadable one is recorded, not raised."""
    out = []
    for pid, sids in zip(cohort.patients["patient_id"], cohort.patients["slide_ids"], strict=True):
        for sid in sids:
            status = SlideStatus(sid, pid)
            path = find_store(features, sid)
            try:
                status.store = open_store(path)
                if status.store.n_regions == 0:
                    status.store, status.error = None, f"{path}: the store holds no regions"
            except HiptError as err:
                status.error = one_line(err, path)
            out.append(status)
    return out


def check_provenance(
    slides: list[SlideStatus], model: SlideModel, allow: bool
) -> list[dict[str, str]]:
    """Every store that differs from the model's training stores, as records.

    Raises:
        HiptError: the first mismatch in one line (store, field, both values), unless
            ``allow`` (then the run goes on and the summary lists them).
    """
    found = []
    for s in slides:
        if s.store is None:
            continue
        bad = provenance_problem(s.store.meta, model.card.trained_on)
        if bad is None:
            continue
        if not allow:
            raise HiptError(
                f"{s.store.path} was made otherwise than the stores MODEL {model.path} was "
                f"trained on ({bad}); re-extract with those settings, or pass "
                "allow_mismatch=true to predict anyway"
            )
        found.append({"slide_id": s.slide_id, "store": str(s.store.path), "mismatch": bad})
    return found


class Predictor:
    """Runs every model on bags and forms the ensemble.

    Args:
        models: the fold models (agreeing on task and input kind).
        task: the fitted task (classes, survival bins).
        kind: store array the models read.
        device: where they run.
    """

    def __init__(self, models: list[SlideModel], task: Task, kind: str, device: torch.device):
        self.models, self.task, self.kind, self.device = models, task, kind, device

    def bag(self, stores: list[FeatureStore]) -> torch.Tensor:
        """The pooled regions of ``stores`` (one patient's slides, in CSV order)."""
        parts = [s.feats256() if self.kind == "feats256" else s.feats4k() for s in stores]
        return torch.from_numpy(np.concatenate(parts)).to(self.device)

    @torch.inference_mode()
    def __call__(self, bag: torch.Tensor) -> Prediction:
        """Every model's and the ensemble's outputs for one bag."""
        outputs, attention = {}, []
        for m in self.models:
            with autocast_context(self.device):
                got = m.model(bag)
            outputs[m.name] = self.task.outputs(got.logits.float().cpu())
            attention.append(got.attention.float().cpu().numpy())
        outputs[ENSEMBLE] = self.task.combine([outputs[m.name] for m in self.models])
        return Prediction(outputs, np.mean(attention, axis=0))


def fingerprint(cfg: PredictConfig, models: list[SlideModel], slides: list[SlideStatus]) -> str:
    """What identifies a run's result: settings, model files, cohort file and every store."""
    ident = {
        "config": predict_hash(cfg),
        "models": [m.sha256 for m in models],
        "cohort": hashlib.sha256(Path(cfg.cohort).read_bytes()).hexdigest(),
        "stores": [
            (s.slide_id, s.store.meta.created_at, s.store.meta.config_hash)
            if s.store
            else (s.slide_id, s.error)
            for s in slides
        ],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def predict_all(
    predictor: Predictor, cohort: PredictCohort, slides: list[SlideStatus]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    """Stream the patients one at a time; return patient rows, slide rows and timing.

    A slide whose store fails to read is recorded and left out of its patient's bag; a patient
    with no readable slide is recorded and not predicted.
    """
    by_patient: dict[str, list[SlideStatus]] = {}
    for s in slides:
        by_patient.setdefault(s.patient_id, []).append(s)
    patient_rows: list[dict[str, Any]] = []
    slide_rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for row in cohort.patients.itertuples(index=False):
        usable: list[tuple[SlideStatus, torch.Tensor]] = []
        for s in by_patient[row.patient_id]:
            if s.store is not None:
                try:
                    usable.append((s, predictor.bag([s.store])))
                except HiptError as err:  # a damaged chunk: this slide is skipped
                    s.error, s.store = one_line(err), None
            if s.store is None:
                log.error("slide %s skipped: %s", s.slide_id, s.error)
                slide_rows.append(
                    {
                        "slide_id": s.slide_id,
                        "patient_id": s.patient_id,
                        "status": "failed",
                        "error": s.error,
                    }
                )
        if not usable:
            patient_rows.append({"patient_id": row.patient_id, "status": "failed"})
            continue
        whole = predictor(torch.cat([b for _, b in usable]))
        offset = 0
        for s, b in usable:
            one = whole if len(usable) == 1 else predictor(b)
            att = whole.attention[offset : offset + len(b)] if len(usable) > 1 else one.attention
            slide_rows.append(
                {
                    "slide_id": s.slide_id,
                    "patient_id": s.patient_id,
                    "status": "ok",
                    "store": s.store,
                    "prediction": one,
                    "attention": att,
                }
            )
            offset += len(b)
        patient_rows.append(
            {
                "patient_id": row.patient_id,
                "status": "ok",
                "prediction": whole,
                "slide_ids": [s.slide_id for s, _ in usable],
                "n_regions": offset,
            }
        )
    seconds = time.perf_counter() - t0
    n_ok = sum(r["status"] == "ok" for r in patient_rows)
    timing = {"seconds": round(seconds, 3), "seconds_per_patient": round(seconds / max(n_ok, 1), 4)}
    return patient_rows, slide_rows, timing


def run(cfg: PredictConfig) -> int:
    """Predict every patient of ``cfg.cohort``; 1 when any slide or patient was skipped."""
    validate(cfg)
    device = resolve_device(cfg.accelerator)
    log.info("predict: %s", describe_device(device, "bf16 autocast" if device.type == "cuda"
                                             else "32-true", set_fp32_matmul(device)))  # fmt: skip
    models = load_slide_models(cfg.model, device, cfg.task, cfg.classes)
    task = task_from_state(models[0].card.output)
    task.cfg.column = cfg.target.column
    kind = models[0].input_kind(cfg.model_input)
    cohort = read_cohort(cfg.cohort, task)
    slides = open_slides(cohort, Path(cfg.features))
    mismatches = check_provenance(slides, models[0], cfg.allow_mismatch)
    for m in mismatches:
        log.warning("allow_mismatch: %s: %s", m["store"], m["mismatch"])
    fp = fingerprint(cfg, models, slides)
    inputs: list[str | Path] = [cfg.cohort, cfg.features, *(m.path for m in models)]
    with StageRun(STAGE, cfg, cfg.out, inputs=inputs, defer_start=True) as stage:
        if outputs_current(stage.out, fp, overwrite=cfg.overwrite, what="predictions"):
            log.info("predictions in %s are up to date", stage.out)
            return 0
        stage.start()
        log.info(
            "predict: %d model(s) (%s) on %d patients, %d slides, %s on %s",
            len(models),
            kind,
            len(cohort.patients),
            len(slides),
            task.name,
            device,
        )
        predictor = Predictor(models, task, kind, device)
        patient_rows, slide_rows, timing = predict_all(predictor, cohort, slides)
        facts = {
            "fingerprint": fp,
            "mismatches": mismatches,
            "timing": timing,
            "allow_mismatch": cfg.allow_mismatch,
            "device": str(device),
            "input": kind,
        }
        summary = write_results(cfg, stage, task, models, cohort, patient_rows, slide_rows, facts)
        stage.done({"totals": summary["totals"]})
    totals = summary["totals"]
    log.info(
        "predict: %d patients predicted, %d evaluated, %d slide(s) skipped (%.3f s per "
        "patient) -> %s",
        totals["predicted"],
        totals["evaluated"],
        totals["slides_failed"],
        timing["seconds_per_patient"],
        cfg.out,
    )
    if totals["slides_failed"] or totals["patients_failed"]:
        log.error(
            "%d slide(s) skipped; see %s", totals["slides_failed"], Path(cfg.out) / "summary.json"
        )
        return 1
    return 0
