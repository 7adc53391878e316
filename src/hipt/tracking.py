"""The one Weights & Biases logger factory used by every stage (offline unless asked otherwise)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from hipt.config import WandbConfig, to_container
from hipt.errors import ConfigError

MODES = ("offline", "online", "disabled")
#: W&B's per-user folders (debug logs under the cache dir, artifact staging under the data dir),
#: kept inside the stage's W&B folder so that a run writes nothing outside its output folder;
#: a value the user set in the environment before the first run is kept.
RUN_LOCAL_DIRS = {"WANDB_CACHE_DIR": ".cache", "WANDB_DATA_DIR": ".data"}
_USER_SET = frozenset(k for k in RUN_LOCAL_DIRS if k in os.environ)


def resolve_mode(cfg: WandbConfig) -> str:
    """The W&B mode in force: ``WANDB_MODE`` from the environment wins over the config."""
    mode = os.environ.get("WANDB_MODE") or cfg.mode
    if mode == "dryrun":
        mode = "offline"
    if mode not in MODES:
        raise ConfigError(f"wandb.mode must be one of {', '.join(MODES)}, got '{mode}'")
    return mode


def keep_wandb_files_in(save_dir: Path) -> None:
    """Point W&B's per-user folders (see :data:`RUN_LOCAL_DIRS`) under ``save_dir/wandb``."""
    save_dir.mkdir(parents=True, exist_ok=True)
    for var, sub in RUN_LOCAL_DIRS.items():
        if var not in _USER_SET:
            os.environ[var] = str((save_dir / "wandb" / sub).resolve())


def create_logger(
    cfg: WandbConfig,
    stage: str,
    out_dir: str | Path,
    run_config: Any = None,
    name: str | None = None,
    group: str | None = None,
) -> WandbLogger:
    """Build the Lightning ``WandbLogger`` for a stage; non-Lightning stages use it directly.

    Args:
        cfg: the stage's ``wandb`` config block.
        stage: stage name, used as W&B ``job_type``.
        out_dir: the stage's output folder; run files go to ``<out_dir>/wandb`` unless
            ``cfg.dir`` says otherwise.
        run_config: the stage config, stored with the run.
        name: run name (defaults to the stage name).
        group: overrides ``cfg.group`` (e.g. one group per cross-validated experiment).

    Returns:
        A logger whose ``experiment`` is created lazily; offline runs write
        ``<dir>/wandb/offline-run-*`` and can be uploaded later with ``wandb sync``.
    """
    mode = resolve_mode(cfg)
    os.environ.setdefault("WANDB_SILENT", "true")  # keep wandb's banner out of stage logs
    save_dir = Path(cfg.dir) if cfg.dir else Path(out_dir)
    keep_wandb_files_in(save_dir)
    config = to_container(run_config) if run_config is not None else None
    logger = WandbLogger(
        name=name or stage,
        save_dir=str(save_dir),
        project=cfg.project,
        entity=cfg.entity,
        group=group or cfg.group,
        tags=list(cfg.tags),
        job_type=stage,
        config=config,
        mode=mode,
        offline=mode == "offline",
        settings={"console": "off", "silent": True},
    )
    # Lightning always passes wandb's deprecated `anonymous` argument (None), which makes
    # wandb 0.31 print a warning on every run; it has no effect, so drop it.
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    return logger


def finish(logger: WandbLogger | None, ok: bool = True) -> None:
    """Close the W&B run (flushes offline files) if one was started."""
    if logger is None:
        return
    if getattr(logger, "_experiment", None) is not None:
        logger.experiment.finish(exit_code=0 if ok else 1)
