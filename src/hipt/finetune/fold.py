"""Train, select and evaluate one cross-validation fold; write its predictions and model."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.loggers import WandbLogger

from hipt.features import FeatureStoreMeta
from hipt.finetune.config import FinetuneConfig
from hipt.finetune.datamodule import BagDataset, BagReader, SlideBagDataModule
from hipt.finetune.module import SlideTaskModule
from hipt.finetune.selection import SelectBest
from hipt.finetune.slide_model import ModelPlan, build_model, fit_scaler
from hipt.io import atomic_write_json, atomic_write_text
from hipt.models import export_model
from hipt.models.runtime import resolve_device, resolve_precision
from hipt.tasks.base import Task

log = logging.getLogger(__name__)

#: The fold's model: weights + card (``model.json``), the one export format.
MODEL_FILE = "model.safetensors"


@dataclass
class FoldResult:
    """What one fold produced.

    Attributes:
        fold: fold index.
        metrics: test metrics.
        predictions: test predictions (as written to ``predictions.csv``).
        runtime_s: wall time of training + prediction.
        info: counts and selection facts (also in ``done.json``).
    """

    fold: int
    metrics: dict[str, float]
    predictions: pd.DataFrame
    runtime_s: float
    info: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-Trainer INFO lines (devices, tips); the fold log says enough.

    Also its warning that modules are in eval mode when training starts: a frozen ViT-4K is
    kept in eval mode on purpose (``HiptLGP.train``).
    """
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _trainer(
    cfg: FinetuneConfig,
    logger: WandbLogger | None,
    callbacks: list[L.Callback],
    n_train: int,
    has_val: bool,
) -> L.Trainer:
    t = cfg.train
    cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not torch.cuda.is_available())
    return L.Trainer(
        accelerator=t.accelerator,
        devices=1,
        precision=resolve_precision(t.precision, t.accelerator),  # type: ignore[arg-type]
        max_epochs=t.max_epochs,
        accumulate_grad_batches=t.accumulate_grad_batches,
        # CUDA has no deterministic cumsum backward (used by the survival NLL): warn there.
        deterministic=True if cpu else "warn",
        enable_checkpointing=False,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=None if has_val else 0,
        log_every_n_steps=max(1, min(50, n_train)),
    )


def predictions_frame(task: Task, patients: pd.DataFrame, logits: torch.Tensor) -> pd.DataFrame:
    """``patient_id``, ``slide_ids``, true labels (or time/event) and the task's outputs."""
    frame = pd.DataFrame(
        {
            "patient_id": patients["patient_id"].to_numpy(),
            "slide_ids": [";".join(s) for s in patients["slide_ids"]],
        }
    )
    for name, values in {**task.truth(patients), **task.outputs(logits)}.items():
        frame[name] = values
    return frame


def train_fold(
    k: int,
    cfg: FinetuneConfig,
    task: Task,
    patients: pd.DataFrame,
    fold: pd.DataFrame,
    reader: BagReader,
    plan: ModelPlan,
    meta: FeatureStoreMeta,
    out: Path,
    logger: WandbLogger | None,
    chash: str = "",
) -> FoldResult:
    """Fit fold ``k`` (seed ``cfg.seed + k``), predict its test part, write its outputs.

    Writes ``out/fold_<k>/predictions.csv`` and the model (``model.safetensors`` + its card
    ``model.json``, loaded by :func:`hipt.models.load`); the caller writes ``done.json`` last
    (:func:`write_done`), which marks the fold finished.
    """
    start = time.perf_counter()
    seed = cfg.seed + k
    L.seed_everything(seed, workers=True, verbose=False)
    part = dict(zip(fold["patient_id"], fold["part"], strict=True))
    split = {
        p: patients[patients["patient_id"].map(part) == p].reset_index(drop=True)
        for p in ("train", "val", "test")
    }
    task.fit(split["train"])

    def dataset(p: str, cap: int | None) -> BagDataset:
        return BagDataset(reader, split[p]["patient_id"], task.targets(split[p]), cap)

    has_val = len(split["val"]) > 0
    dm = SlideBagDataModule(
        dataset("train", cfg.data.max_regions),
        dataset("val", None) if has_val else None,
        dataset("test", None),
        task.sample_labels(split["train"]) if cfg.data.balanced_sampling else None,
        seed,
        cfg.data.num_workers,
    )
    model = build_model(plan, meta)
    # whole training bags, in patient order: the fit depends on the fold only
    device = resolve_device(cfg.train.accelerator)
    bags = (reader.read(p) for p in split["train"]["patient_id"])
    scaler_rows = fit_scaler(model, bags, device)
    module = SlideTaskModule(model, task, cfg.train.lr, cfg.train.weight_decay)
    selector = None
    if cfg.train.select == "best_val" or cfg.train.early_stopping_patience:
        monitor = cfg.train.monitor or task.default_monitor
        selector = SelectBest(
            monitor, cfg.train.select == "best_val", cfg.train.early_stopping_patience
        )
    with quiet_lightning():
        trainer = _trainer(
            cfg, logger, [selector] if selector else [], len(split["train"]), has_val
        )
        trainer.fit(module, datamodule=dm)
        logits = torch.cat(trainer.predict(module, dataloaders=dm.predict_dataloader()))  # type: ignore[arg-type]
    metrics = task.metrics(logits, task.targets(split["test"]))
    frame = predictions_frame(task, split["test"], logits)

    fold_dir = out / f"fold_{k}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(fold_dir / "predictions.csv", frame.to_csv(index=False))
    export_model(
        model,
        fold_dir / MODEL_FILE,
        consumes=plan.kind,
        output=task.state(),
        trained_on=meta.provenance(),
        meta={
            "stage": "finetune",
            "task": cfg.task,
            "fold": k,
            "seed": seed,
            "config_hash": chash,
        },  # fmt: skip
        overwrite=True,
    )
    runtime = time.perf_counter() - start
    fold_info = {
        "n_train": len(split["train"]),
        "n_val": len(split["val"]),
        "n_test": len(split["test"]),
        "epochs_run": trainer.current_epoch,
        "seed": seed,
        "input": plan.kind,
        "scaler_rows": scaler_rows,
        "selected_epoch": (
            selector.best_epoch
            if selector and selector.restore_best and selector.best_state is not None
            else trainer.current_epoch - 1
        ),
    }
    if logger is not None:
        logger.log_metrics({f"test/{n}": v for n, v in metrics.items()}, step=trainer.global_step)
    log.info("fold %d: %s (%.1f s)", k, _fmt(metrics), runtime)
    return FoldResult(k, metrics, frame, runtime, fold_info)


def write_done(out: Path, result: FoldResult, config_hash: str, inputs_key: str = "") -> None:
    """Mark fold finished: metrics, runtime, the config hash and the inputs that produced it."""
    atomic_write_json(
        out / f"fold_{result.fold}" / "done.json",
        {
            "config_hash": config_hash,
            "inputs_key": inputs_key,
            "metrics": result.metrics,
            "runtime_s": result.runtime_s,
            **result.info,
        },
    )


def read_done(out: Path, k: int) -> tuple[dict[str, Any], pd.DataFrame] | None:
    """``(done.json, predictions)`` of a finished fold, or None."""
    done = out / f"fold_{k}" / "done.json"
    if not done.is_file():
        return None
    preds = pd.read_csv(out / f"fold_{k}" / "predictions.csv", dtype={"patient_id": str})
    return json.loads(done.read_text()), preds


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3f}" if np.isfinite(v) else f"{k}=nan" for k, v in metrics.items())
