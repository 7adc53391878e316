"""The predict stage's files: predictions.csv, slides.csv, metrics.csv, plots, summary.json, W&B."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hipt.io import atomic_write_text
from hipt.models.slide import SlideModel
from hipt.predict.cohort import PredictCohort
from hipt.predict.config import PredictConfig
from hipt.stage import StageRun
from hipt.tasks.base import Task
from hipt.tasks.bootstrap import bootstrap_metrics
from hipt.tasks.plots import task_plots

if TYPE_CHECKING:
    from hipt.predict.runner import Prediction

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
ENSEMBLE_RULE = (
    "mean over the fold models of every numeric output (class probabilities, risk, hazards, "
    "survival per bin); the ensemble's class is decided from those means as one model decides"
)


def _columns(pred: Prediction, names: list[str]) -> dict[str, Any]:
    """Ensemble columns unprefixed, then ``<model>_<column>`` for each model (one row)."""
    row = {k: v[0] for k, v in pred.outputs[ENSEMBLE].items()}
    if names != [ENSEMBLE]:
        for name in names:
            row.update({f"{name}_{k}": v[0] for k, v in pred.outputs[name].items()})
    return row


def predictions_table(
    task: Task, cohort: PredictCohort, rows: list[dict[str, Any]], names: list[str]
) -> pd.DataFrame:
    """One row per predicted patient: ids, region count, truth (when labelled), outputs."""
    truth: dict[str, dict[str, Any]] = {}
    lab = cohort.labelled
    if len(lab):
        cols = task.truth(lab)
        truth = {p: {k: v[i] for k, v in cols.items()} for i, p in enumerate(lab["patient_id"])}
    out = []
    for r in rows:
        if r["status"] != "ok":
            continue
        rec = {
            "patient_id": r["patient_id"],
            "slide_ids": ";".join(r["slide_ids"]),
            "n_regions": r["n_regions"],
            **truth.get(r["patient_id"], {}),
        }
        out.append({**rec, **_columns(r["prediction"], names)})
    return pd.DataFrame(out)


def slides_table(rows: list[dict[str, Any]], names: list[str], top: int) -> pd.DataFrame:
    """One row per slide: status, region count, its own scores and its top regions (level 0)."""
    out = []
    for r in rows:
        rec: dict[str, Any] = {
            "slide_id": r["slide_id"],
            "patient_id": r["patient_id"],
            "status": r["status"],
            "error": r.get("error") or "",
        }
        if r["status"] == "ok":
            store, att = r["store"], np.asarray(r["attention"])
            coords = store.coords()
            rec["n_regions"] = store.n_regions
            rec.update({k: v for k, v in _columns(r["prediction"], [ENSEMBLE]).items()})
            for rank, m in enumerate(np.argsort(-att, kind="stable")[:top], start=1):
                rec.update(
                    {
                        f"top{rank}_region": int(m),
                        f"top{rank}_x": int(coords[m, 0]),
                        f"top{rank}_y": int(coords[m, 1]),
                        f"top{rank}_attention": float(att[m]),
                    }
                )
        out.append(rec)
    return pd.DataFrame(out)


def stacked(rows: list[dict[str, Any]], name: str) -> dict[str, np.ndarray]:
    """Model ``name``'s prediction columns over ``rows`` (patients, in order)."""
    outs = [r["prediction"].outputs[name] for r in rows]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def evaluate(
    cfg: PredictConfig,
    task: Task,
    cohort: PredictCohort,
    patient_rows: list[dict[str, Any]],
    names: list[str],
) -> pd.DataFrame:
    """The task's metrics with patient-level bootstrap intervals: ensemble, then each model."""
    done = {r["patient_id"]: r for r in patient_rows if r["status"] == "ok"}
    lab = cohort.labelled
    lab = lab[lab["patient_id"].isin(set(done))].reset_index(drop=True)
    if lab.empty:
        return pd.DataFrame()
    rows = [done[p] for p in lab["patient_id"]]
    target = task.targets(lab)
    frames = []
    for name in [ENSEMBLE, *(n for n in names if n != ENSEMBLE)]:
        table = bootstrap_metrics(
            task.score, stacked(rows, name), target, cfg.bootstrap, cfg.ci, cfg.seed
        )
        frames.append(table.assign(model=name, n_patients=len(lab)))
    cols = ["model", "metric", "value", "ci_low", "ci_high", "n_valid", "n_patients"]
    return pd.concat(frames, ignore_index=True)[cols]


def write_results(
    cfg: PredictConfig,
    stage: StageRun,
    task: Task,
    models: list[SlideModel],
    cohort: PredictCohort,
    patient_rows: list[dict[str, Any]],
    slide_rows: list[dict[str, Any]],
    facts: dict[str, Any],
) -> dict[str, Any]:
    """Write every output file and the W&B run; return the summary (also summary.json)."""
    out = stage.out
    names = [m.name for m in models] if len(models) > 1 else [ENSEMBLE]
    preds = predictions_table(task, cohort, patient_rows, names)
    atomic_write_text(out / "predictions.csv", preds.to_csv(index=False))
    slides = slides_table(slide_rows, names, cfg.top_regions)
    atomic_write_text(out / "slides.csv", slides.to_csv(index=False))
    metrics = evaluate(cfg, task, cohort, patient_rows, names)
    plots: dict[str, Path] = {}
    if len(metrics):
        atomic_write_text(out / "metrics.csv", metrics.to_csv(index=False))
        evaluated = preds[preds["patient_id"].isin(set(cohort.labelled["patient_id"]))]
        plots = task_plots(task, [evaluated], out, "external cohort, ensemble")
    summary = _summary(task, models, cohort, patient_rows, slide_rows, metrics, preds, facts)
    _log_wandb(stage, metrics, preds, plots)
    stage.write_summary(summary)
    return summary


def _summary(
    task: Task,
    models: list[SlideModel],
    cohort: PredictCohort,
    patient_rows: list[dict[str, Any]],
    slide_rows: list[dict[str, Any]],
    metrics: pd.DataFrame,
    preds: pd.DataFrame,
    facts: dict[str, Any],
) -> dict[str, Any]:
    failed = [
        {k: r[k] for k in ("slide_id", "patient_id", "error")}
        for r in slide_rows
        if r["status"] != "ok"
    ]
    lab = set(cohort.labelled["patient_id"])
    predicted = set(preds["patient_id"]) if len(preds) else set()
    ens = metrics[metrics["model"] == ENSEMBLE] if len(metrics) else metrics
    return {
        "stage": "predict",
        **facts,
        "task": task.name,
        "classes": task.classes,
        "ensemble_rule": ENSEMBLE_RULE,
        "models": [
            {
                "name": m.name,
                "path": str(m.path),
                "sha256": m.sha256,
                "architecture": m.architecture,
                "consumes": m.card.consumes,
                "trained_on": m.card.trained_on,
                "meta": m.card.meta,
            }
            for m in models
        ],
        "totals": {
            "patients": len(cohort.patients),
            "predicted": len(predicted),
            "patients_failed": sum(r["status"] != "ok" for r in patient_rows),
            "evaluated": len(predicted & lab),
            "unlabelled": len(predicted - lab),
            "slides": len(slide_rows),
            "slides_ok": len(slide_rows) - len(failed),
            "slides_failed": len(failed),
        },
        "failed": failed,
        "metrics": {
            r.metric: {"value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high}
            for r in ens.itertuples()
        },
    }


def _log_wandb(
    stage: StageRun, metrics: pd.DataFrame, preds: pd.DataFrame, plots: dict[str, Path]
) -> None:
    logger = stage.logger
    if len(metrics):
        logger.log_metrics(
            {f"{r.model}/{r.metric}": r.value for r in metrics.itertuples() if np.isfinite(r.value)}
        )
    if len(preds):
        logger.log_table(key="predictions", dataframe=preds)
    for key, path in plots.items():
        logger.log_image(key=f"plots/{key}", images=[str(path)])
