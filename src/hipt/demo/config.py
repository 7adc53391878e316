"""Typed config of ``make demo`` (``conf/demo.yaml``) and its validation."""

from __future__ import annotations

import dataclasses

from hipt.config import WandbConfig, config_hash, non_result
from hipt.demo.cohort import CohortConfig
from hipt.errors import ConfigError

TASKS = ("subtype", "stage", "survival", "response")


@dataclasses.dataclass
class StageArgs:
    """Extra ``key=value`` overrides handed to each stage (after the demo's own).

    ``{pretrain_256}`` and ``{pretrain_4k}`` in a value stand for the backbone files that the
    demo's pretrain stages export (e.g. ``model.checkpoint_4k={pretrain_4k}``).

    Attributes:
        tile: for ``pipelines.tile``.
        pretrain_256: for ``pipelines.pretrain level=256`` (on top of ``pretrain_256_config``).
        extract: for ``pipelines.extract_features``.
        pretrain_4k: for ``pipelines.pretrain level=4k`` (on top of ``pretrain_4k_config``).
        finetune: for every ``pipelines.finetune`` run (all tasks, models and controls).
        finetune_tasks: further overrides per task (e.g. ``survival: [train.lr=1e-3]``).
        heatmap: for every ``pipelines.heatmap`` run.
        pretrain_256_config: the pretrain YAML (relative to ``conf/``) for ViT-256.
        pretrain_4k_config: the pretrain YAML (relative to ``conf/``) for ViT-4K.
    """

    tile: list[str] = dataclasses.field(default_factory=list)
    pretrain_256: list[str] = dataclasses.field(default_factory=list)
    extract: list[str] = dataclasses.field(default_factory=list)
    pretrain_4k: list[str] = dataclasses.field(default_factory=list)
    finetune: list[str] = dataclasses.field(default_factory=list)
    finetune_tasks: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    heatmap: list[str] = dataclasses.field(default_factory=list)
    pretrain_256_config: str = "demo/pretrain_256.yaml"
    pretrain_4k_config: str = "demo/pretrain_4k.yaml"


@dataclasses.dataclass
class DemoConfig:
    """Settings of ``make demo``; ``conf/demo.yaml`` documents the defaults.

    Attributes:
        out: the demo folder: ``cohort/``, one folder per stage, ``report.md``.
        seed: seed of the cohort (and of nothing else: the stages keep their own seeds).
        tasks: finetune tasks to run.
        models: slide models the demo knows, name -> overrides (``model.name=...`` etc.).
        run_models: the ones to finetune (names of ``models``).
        headline_model: the model (one of ``run_models``) whose results lead the report, that
            gets the shuffled-label controls and whose subtype folds draw the heatmaps.
        controls: also run every task with labels shuffled across patients.
        control_repeats: independent label permutations per task (seeds 1..N); the report
            pools their folds, so the control's mean is a tighter estimate of chance.
        heatmap_slides: synthetic slides to draw (the sample slide is drawn too when present).
        external: also draw an independent external cohort (other patients, same planted
            biology), tile and extract it with the same encoders, and ``make predict`` it with
            the headline model's fold models: the external-validation rows of the report.
        external_seed: seed of that cohort (default: ``seed + 1``, never used for training).
        external_bootstrap: bootstrap resamples of the external metrics' 95% intervals.
        force: rerun every stage even when its outputs are up to date.
        isolate: run each stage in its own ``python -m pipelines.<stage>`` process instead of
            in this one (slower start, nothing shared between stages).
        jobs: finetune runs (independent of each other) at a time, each in a worker process;
            1 runs them one after another in this process.
        torch_threads: torch intra-op threads of the stages (``null``: torch's default, one per
            core). 1 leaves the other core to the data-loading worker, and avoids OpenMP threads
            spinning against each other on a busy 2-core machine (measured 3-4x faster there).
        cohort: the synthetic cohort.
        stages: per-stage overrides.
        wandb: W&B settings handed to every stage; ``group`` defaults to ``demo-<hash>``.
    """

    out: str = non_result("data/demo")
    seed: int = 0
    tasks: list[str] = dataclasses.field(default_factory=lambda: list(TASKS))
    models: dict[str, list[str]] = dataclasses.field(
        default_factory=lambda: {
            "hipt_lgp": [
                "model.name=hipt_lgp_tiny_test",
                "model.checkpoint_4k={pretrain_4k}",
                "model.standardize=true",
            ],
            "abmil": ["model.name=abmil_tiny_test", "model.input=feats256"],
        }
    )
    run_models: list[str] = dataclasses.field(default_factory=lambda: ["hipt_lgp", "abmil"])
    headline_model: str = "hipt_lgp"
    controls: bool = True
    control_repeats: int = 3
    heatmap_slides: int = 2
    external: bool = True
    external_seed: int | None = None
    external_bootstrap: int = 1000
    force: bool = non_result(False)
    isolate: bool = non_result(False)
    jobs: int = non_result(2)
    torch_threads: int | None = non_result(1)
    cohort: CohortConfig = dataclasses.field(default_factory=CohortConfig)
    stages: StageArgs = dataclasses.field(default_factory=StageArgs)
    wandb: WandbConfig = non_result(default_factory=WandbConfig)


def validate(cfg: DemoConfig) -> None:
    """Raise :class:`ConfigError` naming the first invalid value."""
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown or not cfg.tasks:
        raise ConfigError(f"tasks must be a non-empty subset of {', '.join(TASKS)}, got {unknown}")
    unknown = [m for m in cfg.run_models if m not in cfg.models]
    if unknown or not cfg.run_models:
        raise ConfigError(
            f"run_models must name some of models ({', '.join(cfg.models)}), got {unknown}"
        )
    if cfg.headline_model not in cfg.run_models:
        raise ConfigError(
            f"headline_model '{cfg.headline_model}' is not one of run_models: "
            f"{', '.join(cfg.run_models)}"
        )
    c = cfg.cohort
    if c.n_patients < 8:
        raise ConfigError(f"cohort.n_patients must be >= 8 (4 stages x 2), got {c.n_patients}")
    if (
        len(c.slides_per_patient) != 2
        or not 1 <= c.slides_per_patient[0] <= c.slides_per_patient[1]
    ):
        raise ConfigError(
            f"cohort.slides_per_patient must be [min, max] with 1 <= min <= max, "
            f"got {list(c.slides_per_patient)}"
        )
    if len(c.regions) != 2 or min(c.regions) < 1 or c.regions[0] * c.regions[1] < 2:
        raise ConfigError(
            f"cohort.regions must be [rows, cols] with >= 2 regions (response is planted in "
            f"how regions differ), got {list(c.regions)}"
        )
    if cfg.jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {cfg.jobs}")
    if cfg.control_repeats < 1:
        raise ConfigError(f"control_repeats must be >= 1, got {cfg.control_repeats}")
    if cfg.torch_threads is not None and cfg.torch_threads < 1:
        raise ConfigError(f"torch_threads must be >= 1 or null, got {cfg.torch_threads}")
    if cfg.external_seed is not None and cfg.external_seed == cfg.seed:
        raise ConfigError("external_seed must differ from seed (an independent cohort)")
    if c.fine_mpp_every < 0 or cfg.heatmap_slides < 0:
        raise ConfigError("cohort.fine_mpp_every and heatmap_slides must be >= 0")
    if not 1 <= c.jpeg_quality <= 100:
        raise ConfigError(f"cohort.jpeg_quality must be in 1..100, got {c.jpeg_quality}")


def demo_hash(cfg: DemoConfig) -> str:
    """sha256 of the settings that change the demo's results (non-result fields left out)."""
    return config_hash(cfg)
