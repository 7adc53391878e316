"""Typed config of ``make pipeline`` (``conf/pipeline.yaml``) and its validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hipt.config import WandbConfig, config_hash, non_result
from hipt.errors import ConfigError

TASKS = ("subtype", "stage", "survival", "response")
PRETRAIN = ("none", "4k", "both")


@dataclasses.dataclass
class PipelineConfig:
    """Settings of ``make pipeline``; ``conf/pipeline.yaml`` documents the defaults.

    Attributes:
        slides: folder of slides (files or DICOM series folders) or a manifest CSV.
        cohort: cohort CSV (``slide_id, patient_id`` and the tasks' label columns).
        out: the run folder: one folder per stage, ``provenance/``, ``report.md/html``.
        tasks: finetune tasks (``TASKS=subtype,survival``).
        pretrain: ``none`` uses ``checkpoint256``/``checkpoint4k`` as given (the official
            weights: the common case); ``4k`` pretrains ViT-4K on the cohort's grids, then
            re-encodes ``feats4k`` with it; ``both`` pretrains ViT-256 first as well.
        checkpoint256: ViT-256 weights (needed unless ``pretrain=both``).
        checkpoint4k: ViT-4K weights (needed when ``pretrain=none``).
        model256: the patch encoder (``MODEL256=uni``, ``timm:<arch>``; default: extraction's
            ``vit256_small``), for extraction of both cohorts and, with ``pretrain=both``,
            pretrain-256; the ViT-4K is built for its width.
        annotations: folder of QuPath ``<slide_id>.geojson`` (regions of interest).
        external_slides: slides of an independent cohort (folder or manifest CSV): tiled and
            extracted with the same encoders, then predicted by every task's fold models.
        external_cohort: its cohort CSV (labels optional: with them ``make predict`` also
            reports metrics with bootstrap intervals).
        heatmaps: slides drawn per task: the ``heatmaps`` highest- and as many lowest-scored
            patients' first slides (0: none).
        force: rerun every step.
        dry_run: print the plan (every step, run or skip, and why) and stop.
        jobs: finetune runs at a time (worker processes); 1 runs them in this process.
        isolate: each stage in its own process instead of this one.
        launcher: command prefix that starts extraction and pretraining as one process per
            device (``srun`` inside a SLURM allocation: every node; ``torchrun --no-python
            --standalone --nproc-per-node=4``: this node's GPUs); the other steps run here.
            ``None``: like every other step.
        pretrain_256_config: pretrain YAML (under ``conf/``) for ViT-256.
        pretrain_4k_config: pretrain YAML (under ``conf/``) for ViT-4K.
        tile: overrides of the tile stage (``tile.min_tissue=0.2``).
        pretrain_256: overrides of pretrain-256.
        extract: overrides of extract-features.
        pretrain_4k: overrides of pretrain-4k.
        encode_4k: overrides of encode-4k.
        finetune: overrides of every finetune run.
        finetune_tasks: further finetune overrides per task.
        predict: overrides of the external cohort's predict runs.
        heatmap: overrides of every heatmap run.
        wandb: W&B settings handed to every stage; ``group`` defaults to ``pipeline-<hash>``.
    """

    slides: str = non_result("???")
    cohort: str = non_result("???")
    out: str = non_result("???")
    tasks: list[str] = dataclasses.field(default_factory=lambda: ["subtype"])
    pretrain: str = "none"
    checkpoint256: str | None = None
    checkpoint4k: str | None = None
    model256: str | None = None
    annotations: str | None = None
    external_slides: str | None = None
    external_cohort: str | None = None
    heatmaps: int = 2
    force: bool = non_result(False)
    dry_run: bool = non_result(False)
    jobs: int = non_result(1)
    isolate: bool = non_result(False)
    launcher: str | None = non_result(None)
    pretrain_256_config: str = "pretrain_256.yaml"
    pretrain_4k_config: str = "pretrain_4k.yaml"
    tile: dict[str, Any] = dataclasses.field(default_factory=dict)
    pretrain_256: dict[str, Any] = dataclasses.field(default_factory=dict)
    extract: dict[str, Any] = dataclasses.field(default_factory=dict)
    pretrain_4k: dict[str, Any] = dataclasses.field(default_factory=dict)
    encode_4k: dict[str, Any] = dataclasses.field(default_factory=dict)
    finetune: dict[str, Any] = dataclasses.field(default_factory=dict)
    finetune_tasks: dict[str, Any] = dataclasses.field(default_factory=dict)
    predict: dict[str, Any] = dataclasses.field(default_factory=dict)
    heatmap: dict[str, Any] = dataclasses.field(default_factory=dict)
    wandb: WandbConfig = non_result(default_factory=WandbConfig)


def pipeline_hash(cfg: PipelineConfig) -> str:
    """Hash of the settings that change results (the W&B group name's suffix)."""
    return config_hash(cfg)


def validate(cfg: PipelineConfig) -> None:
    """Raise :class:`ConfigError` naming the first invalid value (before anything runs)."""
    for key, shortcut in (("slides", "SLIDES"), ("cohort", "COHORT"), ("out", "OUT")):
        if not str(getattr(cfg, key) or "").strip():
            raise ConfigError(f"{key} is required ({shortcut}=<...>)")
    if not Path(cfg.slides).exists():
        raise ConfigError(f"SLIDES={cfg.slides} does not exist (a folder of slides or a CSV)")
    if not Path(cfg.cohort).is_file():
        raise ConfigError(f"COHORT={cfg.cohort} is not a file (a CSV: slide_id, patient_id, ...)")
    if cfg.pretrain not in PRETRAIN:
        raise ConfigError(f"PRETRAIN must be one of {', '.join(PRETRAIN)}, got '{cfg.pretrain}'")
    bad = [t for t in cfg.tasks if t not in TASKS]
    if not cfg.tasks or bad:
        raise ConfigError(f"TASKS must name some of {', '.join(TASKS)}, got {list(cfg.tasks)}")
    needs = {"checkpoint256": cfg.pretrain != "both", "checkpoint4k": cfg.pretrain == "none"}
    for key, needed in needs.items():
        value = getattr(cfg, key)
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"{key.upper()}={value} is not a file")
        if needed and value is None:
            what = (
                "PRETRAIN=both pretrains one" if key == "checkpoint256" else "PRETRAIN=4k or both"
            )
            raise ConfigError(
                f"PRETRAIN={cfg.pretrain} needs {key.upper()}=<weights file> (or {what}); "
                "random encoders give no usable features"
            )
    if (cfg.external_slides is None) != (cfg.external_cohort is None):
        raise ConfigError("EXTERNAL_SLIDES= and EXTERNAL_COHORT= go together (or leave both out)")
    if cfg.external_slides is not None and not Path(cfg.external_slides).exists():
        raise ConfigError(f"EXTERNAL_SLIDES={cfg.external_slides} does not exist")
    if cfg.external_cohort is not None and not Path(cfg.external_cohort).is_file():
        raise ConfigError(f"EXTERNAL_COHORT={cfg.external_cohort} is not a file")
    unknown = [t for t in cfg.finetune_tasks if t not in cfg.tasks]
    if unknown:
        raise ConfigError(f"finetune_tasks names tasks not in TASKS: {', '.join(unknown)}")
    if cfg.heatmaps < 0 or cfg.jobs < 1:
        raise ConfigError("heatmaps must be >= 0 and jobs >= 1")
