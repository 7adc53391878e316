"""Typed config of the predict stage (``conf/predict.yaml``) and its validation."""

from __future__ import annotations

import dataclasses

from hipt.config import WandbConfig, config_hash, non_result
from hipt.errors import ConfigError
from hipt.tasks.config import TargetConfig

MODEL_INPUTS = ("auto", "feats256", "feats4k")
TASKS = ("subtype", "stage", "survival", "response")


@dataclasses.dataclass
class PredictConfig:
    """Settings of ``make predict``; ``conf/predict.yaml`` documents the defaults.

    Attributes:
        model: a finetune output folder (every ``fold_<k>`` model: each fold's prediction and
            their ensemble), one ``fold_<k>`` folder, an exported ``model.safetensors``, or an
            official finetuned HIPT ``s_<k>_checkpoint.pt`` (give ``task``).
        cohort: CSV with ``slide_id, patient_id`` and, optionally, the task's label columns
            (as finetune reads them); patients without labels are predicted, not evaluated.
        features: folder of the cohort's ``<slide_id>.zarr`` stores.
        out: output folder.
        task: official HIPT files only: what the model predicts (the file does not say).
        classes: official HIPT files only: class names in logit order.
        target: which columns hold the labels (the classes come from the model).
        allow_mismatch: run even when stores were made otherwise than the model's training
            stores (other encoders, weights, MPP, sizes); recorded in the summary.
        model_input: store array fed to the model (``auto``: what its card says).
        bootstrap: patient-level bootstrap resamples of the metrics' intervals (0: none).
        ci: coverage of the intervals.
        seed: seed of the bootstrap.
        top_regions: per slide, the most attended regions listed with level-0 coordinates.
        accelerator: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        overwrite: replace the outputs of a run with other inputs or settings in ``out``.
        wandb: Weights & Biases settings.
    """

    model: str = "???"
    cohort: str = "???"
    features: str = "???"
    out: str = non_result("???")
    task: str | None = None
    classes: list[str] = dataclasses.field(default_factory=list)
    target: TargetConfig = dataclasses.field(default_factory=TargetConfig)
    allow_mismatch: bool = False
    model_input: str = "auto"
    bootstrap: int = 1000
    ci: float = 0.95
    seed: int = 0
    top_regions: int = 3
    accelerator: str = non_result("auto")
    overwrite: bool = non_result(False)
    wandb: WandbConfig = non_result(default_factory=WandbConfig)


def validate(cfg: PredictConfig) -> None:
    """Raise :class:`ConfigError` naming the first invalid value."""
    if cfg.task is not None and cfg.task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got '{cfg.task}'")
    if cfg.model_input not in MODEL_INPUTS:
        raise ConfigError(f"model_input must be one of {', '.join(MODEL_INPUTS)}")
    if cfg.bootstrap < 0 or cfg.top_regions < 0:
        raise ConfigError("bootstrap and top_regions must be >= 0")
    if not 0.0 < cfg.ci < 1.0:
        raise ConfigError(f"ci must be in (0, 1), got {cfg.ci}")


def predict_hash(cfg: PredictConfig) -> str:
    """sha256 of the settings that change the outputs (the non-result fields left out)."""
    return config_hash(cfg)
