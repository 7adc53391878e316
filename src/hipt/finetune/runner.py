"""The finetune stage: validate the cohort, split, train every fold, summarise, plot, track."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.loggers import WandbLogger

from hipt.cohort import Cohort, load_cohort
from hipt.errors import ConfigError, StaleOutputError
from hipt.finetune.config import SELECT, FinetuneConfig
from hipt.finetune.datamodule import BagReader
from hipt.finetune.fold import FoldResult, read_done, train_fold, write_done
from hipt.finetune.slide_model import (
    ModelPlan,
    checkpoint_sha,
    frozen_region_encoder,
    has_region_encoder,
    plan_model,
)
from hipt.finetune.splits import load_or_make_folds
from hipt.io import atomic_write_text
from hipt.models import SLIDE_HEAD, model_spec
from hipt.models.runtime import describe_device, resolve_device, resolve_precision, set_fp32_matmul
from hipt.stage import StageRun
from hipt.tasks.base import Task, build_task
from hipt.tasks.plots import task_plots
from hipt.tracking import finish, resolve_mode

log = logging.getLogger(__name__)
STAGE = "finetune"


def check_config(cfg: FinetuneConfig) -> None:
    """Setting combinations that cannot work, found before any data is read."""
    t = cfg.train
    if t.select not in SELECT:
        raise ConfigError(f"train.select must be one of {SELECT}, got '{t.select}'")
    needs_val = t.select == "best_val" or t.early_stopping_patience is not None
    if needs_val and cfg.split.val_fraction <= 0 and not cfg.split.official_dir:
        raise ConfigError("train.select=best_val and early stopping need split.val_fraction > 0")
    if t.accumulate_grad_batches < 1 or t.max_epochs < 1:
        raise ConfigError("train.accumulate_grad_batches and train.max_epochs must be >= 1")
    if cfg.data.max_regions is not None and cfg.data.max_regions < 1:
        raise ConfigError("data.max_regions must be >= 1 (or null for whole bags)")
    build_task(cfg.task, cfg.target)  # an unknown task is a configuration error
    spec = model_spec(cfg.model.name)  # so is an unknown model
    if spec.kind != SLIDE_HEAD:
        raise ConfigError(
            f"model.name '{cfg.model.name}' is a {spec.kind.replace('_', ' ')}, not a slide "
            "head; finetune trains slide heads (hipt_lgp, abmil, meanpool)"
        )


def shuffle_labels(patients: pd.DataFrame, columns: tuple[str, ...], seed: int) -> pd.DataFrame:
    """Permute the label columns across patients (negative control; bags stay in place)."""
    perm = np.random.default_rng(seed).permutation(len(patients))
    out = patients.copy()
    for col in columns:
        out[col] = patients[col].to_numpy()[perm]
    return out


def _load(cfg: FinetuneConfig, task: Task) -> Cohort:
    expect = {}
    if cfg.expect_checkpoint_4k:
        expect["checkpoint_4k_sha256"] = checkpoint_sha(cfg.expect_checkpoint_4k)
    n_folds = cfg.split.n_folds

    def strata_check(p: pd.DataFrame) -> list[Any]:
        return [] if cfg.split.official_dir else task.check_strata(p, n_folds)

    return load_cohort(cfg.cohort, cfg.features, task.read_labels, expect, strata_check)


def _fold_logger(run: StageRun, name: str, group: str) -> WandbLogger | None:
    if resolve_mode(run.cfg.wandb) == "disabled":
        return None
    return run.new_logger(name=name, group=group)


def summarize(results: list[FoldResult]) -> pd.DataFrame:
    """Per-fold metrics, ``n_test`` and ``runtime_s``, then ``mean`` and ``std`` (sample) rows."""
    rows = [
        {
            "fold": str(r.fold),
            **r.metrics,
            "n_test": r.info.get("n_test", len(r.predictions)),
            "runtime_s": r.runtime_s,
        }
        for r in results
    ]
    table = pd.DataFrame(rows).set_index("fold")
    stats = pd.DataFrame([table.mean(), table.std(ddof=1)], index=["mean", "std"])
    return pd.concat([table, stats]).rename_axis("fold").reset_index()


def _bag_reader(
    cfg: FinetuneConfig, plan: ModelPlan, cohort: Cohort, stores: dict[str, list[str]]
) -> BagReader:
    """The run's bag reader.

    With ``data.encode_once`` and a shared frozen ViT-4K, bags are encoded up front (falls back
    to per-step encoding when the embeddings would not be cached).
    """
    device = resolve_device(cfg.train.accelerator)
    encoder = (
        frozen_region_encoder(cfg.model, plan, cohort.meta, device)
        if cfg.data.encode_once
        else None
    )
    if encoder is not None:
        reader = BagReader(stores, plan.kind, cfg.data.cache_gb, encoder)
        if reader.cached:
            start = time.perf_counter()
            reader.preload()
            log.info(
                "encode_once: region embeddings of %d patients made by the frozen ViT-4K in "
                "%.1f s; training reads those",
                len(stores),
                time.perf_counter() - start,
            )
            return reader
        log.info("encode_once: embeddings exceed data.cache_gb; the ViT-4K runs every step")
    return BagReader(stores, plan.kind, cfg.data.cache_gb)


def inputs_key(cohort: Cohort, patients: pd.DataFrame) -> str:
    """What a fold learns from besides its config: the stores' provenance and the labels.

    A finished fold is reused only when both are unchanged: stores re-encoded with another
    ViT-4K (``make encode-4k``) or an edited cohort CSV retrain it even under the same config.
    """
    blob = json.dumps(cohort.meta.provenance(), sort_keys=True) + patients.to_csv(index=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _run_folds(
    cfg: FinetuneConfig, task: Task, cohort: Cohort, run: StageRun, group: str
) -> list[FoldResult]:
    out, chash = run.out, run.config_hash
    patients = cohort.patients
    if cfg.shuffle_labels:
        patients = shuffle_labels(patients, task.label_columns, cfg.seed)
        log.info("shuffle_labels=true: labels permuted across patients (negative control)")
    plan = plan_model(cfg.model, cohort.meta, task.n_outputs)
    log.info("model %s: %s", plan.name, plan.reason)
    if has_region_encoder(plan.name) and cfg.model.freeze_4k and not cfg.model.checkpoint_4k:
        log.warning(
            "hipt_lgp with a frozen *random* ViT-4K: set model.checkpoint_4k to the "
            "ViT-4K weights (the stores' own give the fast feats4k path)"
        )
    folds = load_or_make_folds(
        out / "splits",
        patients,
        cohort.slides,
        task.strata(patients),
        cfg.split.n_folds,
        cfg.split.val_fraction,
        cfg.split.seed,
        cfg.split.official_dir,
        cfg.split.official_overlap,
        cfg.overwrite,
    )
    stores = cohort.slides.groupby("patient_id", sort=False)["store"].apply(list).to_dict()
    reader = _bag_reader(cfg, plan, cohort, stores)
    results = []
    ikey = inputs_key(cohort, patients)
    for k, fold in enumerate(folds):
        prev = read_done(out, k)
        same = prev is not None and prev[0].get("config_hash") == chash
        if same and prev is not None and prev[0].get("inputs_key") == ikey:
            log.info("fold %d: finished earlier with this config and inputs; reusing it", k)
            done, preds = prev
            results.append(FoldResult(k, done["metrics"], preds, done["runtime_s"], done))
            continue
        if prev is not None and not cfg.overwrite:
            what = "stores or labels" if same else "config"
            raise StaleOutputError(
                f"{out}/fold_{k} was made with other {what}; use overwrite=true or another out="
            )
        logger = _fold_logger(run, f"{group}-fold{k}", group)
        ok = False
        try:
            result = train_fold(
                k, cfg, task, patients, fold, reader, plan, cohort.meta, out, logger, chash
            )
            write_done(out, result, chash, ikey)
            ok = True
        finally:
            finish(logger, ok)
        results.append(result)
    return results


def run_finetune(cfg: FinetuneConfig) -> pd.DataFrame:
    """Run the whole stage; return the summary table (also ``out/summary.csv``)."""
    check_config(cfg)
    if cfg.train.cpu_threads:
        torch.set_num_threads(cfg.train.cpu_threads)
    task = build_task(cfg.task, cfg.target)
    inputs = [cfg.cohort, cfg.features]
    with StageRun(STAGE, cfg, cfg.out, inputs=inputs, defer_start=True) as run:
        cohort = _load(cfg, task)  # a bad cohort stops here, before a file of the folder changes
        run.start()
        device = resolve_device(cfg.train.accelerator)
        precision = resolve_precision(cfg.train.precision, cfg.train.accelerator)
        fp32 = set_fp32_matmul(device, cfg.train.tf32)
        log.info("finetune: %s", describe_device(device, precision, fp32))
        group = cfg.wandb.group or f"{STAGE}-{cfg.task}-{cfg.model.name}-{run.config_hash[:8]}"
        results = _run_folds(cfg, task, cohort, run, group)
        summary = summarize(results)
        atomic_write_text(run.out / "summary.csv", summary.to_csv(index=False))
        made = task_plots(task, [r.predictions for r in results], run.out, "test folds")
        run.done({
            "task": cfg.task,
            "n_patients": len(cohort.patients),
            "n_slides": len(cohort.slides),
            "classes": task.classes,
            "wandb_group": group,
            "shuffle_labels": cfg.shuffle_labels,
        })  # fmt: skip
        logger = _fold_logger(run, f"{group}-summary", group)
        if logger is not None:
            logger.log_table(key="summary", dataframe=summary)
            for key, path in made.items():
                logger.log_image(key=f"plots/{key}", images=[str(path)])
            finish(logger, True)
    means = summary[summary["fold"] == "mean"].iloc[0]
    stds = summary[summary["fold"] == "std"].iloc[0]
    text = ", ".join(f"{m}={means[m]:.3f}±{stds[m]:.3f}" for m in results[0].metrics)
    log.info("finetune %s on %d patients, %d folds: %s -> %s", cfg.task, len(cohort.patients),
             len(results), text, run.out)  # fmt: skip
    return summary
