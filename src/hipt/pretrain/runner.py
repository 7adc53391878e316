"""The pretrain stage: output-folder policy, model/data/Trainer construction, resume and export."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from hipt.config import config_hash, save_resolved, to_container
from hipt.errors import ConfigError, HiptError, StaleOutputError
from hipt.io import clean_stale_tmp, remove_path
from hipt.lock import RunLock
from hipt.models import available, build
from hipt.pretrain.callbacks import RankSync, SaveOnException, Throughput
from hipt.pretrain.config import RESUME_FREE_KEYS, PretrainConfig, validate
from hipt.pretrain.datamodules import RegionGridDataModule, TileDataModule
from hipt.pretrain.dino import DinoModule
from hipt.pretrain.export import BACKBONE, SIDECAR, export_teacher
from hipt.pretrain.heads import MultiCropWrapper, build_head
from hipt.pretrain.loss import DinoCriterion
from hipt.pretrain.schedules import DinoOptim, global_batch_size
from hipt.pretrain.transforms import GridMultiCrop, TileMultiCrop
from hipt.provenance import RunInfo, sha256_file
from hipt.slides.regions import read_metadata
from hipt.tracking import create_logger, finish

log = logging.getLogger(__name__)

STAGE = "pretrain"
CKPT_DIR = "checkpoints"
LAST = "last.ckpt"
OUTPUTS = (CKPT_DIR, BACKBONE, SIDECAR, "run.json", "resolved_config.yaml", "wandb")
HASH_EXCLUDE = ("out", "resume", "overwrite", "wandb")


def launched_as_rank_zero() -> bool:
    """False in the extra processes of a DDP launch (Lightning children, SLURM/torchrun ranks)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        if os.environ.get(var, "0") not in ("", "0"):
            return False
    return True


def resolve_precision(cfg: PretrainConfig) -> str:
    """``auto`` -> ``bf16-mixed`` when CUDA trains, ``32-true`` on CPU (no bf16 fast path)."""
    if cfg.trainer.precision != "auto":
        return str(cfg.trainer.precision)
    on_gpu = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if on_gpu else "32-true"


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix[:-1]: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def resume_conflicts(cfg: PretrainConfig, out: Path) -> list[str]:
    """Settings that differ from the run being resumed (hardware/logging keys may change)."""
    saved_path = out / "resolved_config.yaml"
    if not saved_path.is_file():
        return []
    saved = _flat(OmegaConf.to_container(OmegaConf.load(saved_path), resolve=True))
    now = _flat(to_container(cfg))
    free = tuple(RESUME_FREE_KEYS)
    diff = []
    for key in sorted(set(saved) | set(now)):
        if any(key == f or key.startswith(f + ".") for f in free):
            continue
        if saved.get(key) != now.get(key):
            diff.append(f"{key}: {saved.get(key)!r} -> {now.get(key)!r}")
    return diff


def prepare_out(cfg: PretrainConfig, out: Path) -> Path | None:
    """Apply the output policy; return the checkpoint to resume from (or ``None``).

    Raises:
        HiptError: ``out`` holds a finished or interrupted run and neither ``resume=true`` nor
            ``overwrite=true`` was given.
        StaleOutputError: ``resume=true`` with settings that change the run.
    """
    last = out / CKPT_DIR / LAST
    clean_stale_tmp(out)
    if cfg.overwrite:
        for name in OUTPUTS:
            remove_path(out / name)
        return None
    if cfg.resume:
        diff = resume_conflicts(cfg, out)
        if diff:
            raise StaleOutputError(
                f"{out}: resume=true with settings that differ from the run "
                f"there ({'; '.join(diff)}); use them, or overwrite=true"
            )
        if last.is_file():
            return last
        log.info("%s: no checkpoint to resume from; starting a new run", out)
        return None
    if (out / BACKBONE).is_file():
        raise HiptError(
            f"{out} already holds a finished pretraining run ({BACKBONE}); pass "
            "resume=true to continue it or overwrite=true to start over"
        )
    if last.is_file():
        raise HiptError(
            f"{out} holds an interrupted pretraining run ({CKPT_DIR}/{LAST}); pass "
            "resume=true to continue it or overwrite=true to start over"
        )
    return None


def build_module(cfg: PretrainConfig) -> DinoModule:
    """Student (drop-path) and teacher backbones from the registry, heads, loss, schedules."""
    lightning.seed_everything(cfg.seed, workers=False, verbose=False)
    name, level = cfg.model.name, str(cfg.level)
    if name not in available():
        raise ConfigError(f"unknown model.name '{name}'; choose one of {', '.join(available())}")
    student = build(name, drop_path_rate=cfg.model.drop_path_rate)
    teacher = build(name)
    is_grid_model = hasattr(student, "input_dim")
    if is_grid_model != (level == "4k"):
        kind = "a feature-grid (ViT-4K)" if is_grid_model else "an image (ViT-256)"
        raise ConfigError(f"model.name '{name}' is {kind} model, which level {level} cannot train")
    h = cfg.head
    heads = [
        build_head(
            student.embed_dim,
            h.out_dim,
            h.hidden_dim,
            h.bottleneck_dim,
            h.norm_last_layer,
            h.batch_norm,
        )
        for _ in range(2)
    ]
    lc = cfg.loss
    criterion = DinoCriterion(
        h.out_dim,
        lc.teacher_temp,
        lc.warmup_teacher_temp,
        lc.warmup_teacher_temp_epochs,
        lc.student_temp,
        lc.center_momentum,
    )
    optim = DinoOptim(**to_container(cfg.optim))
    return DinoModule(
        MultiCropWrapper(student, heads[0]),
        MultiCropWrapper(teacher, heads[1]),
        criterion,
        optim,
        batch_size=cfg.data.batch_size,
    )


def build_datamodule(
    cfg: PretrainConfig, module: DinoModule
) -> TileDataModule | RegionGridDataModule:
    """The data module of ``cfg.level``."""
    d = cfg.data
    common = {
        "batch_size": d.batch_size,
        "num_workers": d.num_workers,
        "seed": cfg.seed,
        "max_samples": d.max_samples,
        "pin_memory": d.pin_memory,
    }
    if str(cfg.level) == "256":
        transform = TileMultiCrop(**to_container(cfg.crops256))
        return TileDataModule(
            d.tiles, transform, backend=d.backend, patch_cache=d.patch_cache, **common
        )
    grid = GridMultiCrop(**to_container(cfg.crops4k))
    feature_dim = int(module.student.backbone.input_dim)
    return RegionGridDataModule(
        d.features, feature_dim, grid, min_tissue_patches=d.min_tissue_patches, **common
    )


def cpu_threads_per_process(trainer: Trainer) -> None:
    """Share the cores between CPU DDP processes (as torchrun does) unless OMP_NUM_THREADS is set.

    Each process would otherwise start one intra-op thread per core, and the oversubscribed
    OpenMP threads spin against each other (measured: tens of times slower steps).
    """
    n = trainer.num_devices
    if trainer.strategy.root_device.type != "cpu" or n < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // n))


def build_trainer(
    cfg: PretrainConfig, out: Path, logger: Any, callbacks: list[Callback]
) -> Trainer:
    """``lightning.Trainer`` from ``cfg.trainer`` (DDP, precision, limits) and our callbacks."""
    t = cfg.trainer
    ckpt_dir = out / CKPT_DIR
    every = ModelCheckpoint(
        dirpath=ckpt_dir,
        save_last=True,
        save_top_k=0,
        every_n_train_steps=cfg.checkpoint_every_n_steps,
        enable_version_counter=False,
    )
    on_error = SaveOnException(ckpt_dir / LAST)
    return Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=resolve_precision(cfg),
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        logger=logger,
        callbacks=[every, on_error, *callbacks],
        use_distributed_sampler=False,
        default_root_dir=str(out),
        enable_model_summary=False,
        enable_progress_bar=sys.stderr.isatty(),
    )


def _inputs(cfg: PretrainConfig) -> list[str]:
    return [str(cfg.data.tiles if str(cfg.level) == "256" else cfg.data.features)]


def train(
    cfg: PretrainConfig,
    ckpt_path: Path | None,
    callbacks: list[Callback] | None = None,
    module: DinoModule | None = None,
) -> int:
    """Fit, checkpoint the end state, export the teacher and write ``run.json`` (rank 0).

    Args:
        cfg: validated stage config.
        ckpt_path: Lightning checkpoint to resume from.
        callbacks: extra callbacks (tests).
        module: the module from :func:`build_module` (built here when omitted).
    """
    out = Path(cfg.out)
    module = module if module is not None else build_module(cfg)
    data = build_datamodule(cfg, module)
    data.setup("fit")
    logger = create_logger(cfg.wandb, STAGE, out, cfg, name=f"{STAGE}-{cfg.level}")
    throughput, sync = Throughput(global_batch=0), RankSync()
    ok = False
    try:
        trainer = build_trainer(cfg, out, logger, [throughput, sync, *(callbacks or [])])
        cpu_threads_per_process(trainer)
        throughput.global_batch = global_batch_size(
            cfg.data.batch_size, trainer.world_size, trainer.accumulate_grad_batches
        )
        trainer.fit(module, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None)
        trainer.save_checkpoint(out / CKPT_DIR / LAST, weights_only=False)
        if trainer.is_global_zero:
            _finish_run(cfg, trainer, module, data, ckpt_path, throughput, sync)
        ok = True
    finally:
        finish(logger, ok)  # a later run in this process must not log into this W&B run
    return 0


def _finish_run(
    cfg: PretrainConfig,
    trainer: Trainer,
    module: DinoModule,
    data: TileDataModule | RegionGridDataModule,
    ckpt_path: Path | None,
    throughput: Throughput,
    sync: RankSync,
) -> None:
    """Rank 0 after training: check rank agreement, export the teacher, write ``run.json``."""
    out = Path(cfg.out)
    if len(set(sync.digests)) > 1:
        raise HiptError(f"ranks ended with different weights ({sync.digests}); DDP is broken")
    chash = config_hash(cfg, exclude=HASH_EXCLUDE)
    inputs = _inputs(cfg)
    upstream = (
        read_metadata(data.regions_path) if isinstance(data, TileDataModule) else data.store_meta
    )
    progress = {
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "world_size": trainer.world_size,
        "global_batch": throughput.global_batch,
        "precision": str(trainer.precision),
        "resumed_from": str(ckpt_path or ""),
    }
    meta = {
        "stage": STAGE,
        "level": str(cfg.level),
        "config_hash": chash,
        "teacher": True,
        "input": inputs[0],
        "upstream": upstream,
        **progress,
    }
    path = export_teacher(module.teacher.backbone, cfg.model.name, out, meta)
    extra = {
        "status": "done",
        **progress,
        "upstream": upstream,
        "throughput": throughput.summary,
        "rank_digests": sync.digests,
        "backbone_sha256": sha256_file(path),
    }
    RunInfo.collect(STAGE, chash, inputs=inputs, extra=extra).write(out)
    log.info(
        "pretrain-%s: %d steps, %s -> %s", cfg.level, trainer.global_step, throughput.summary, path
    )


def run(cfg: PretrainConfig) -> int:
    """Stage entry (``pipelines.pretrain``): validate, lock ``out``, then :func:`train`."""
    validate(cfg)
    module = build_module(cfg)  # model errors surface before anything is written
    out = Path(cfg.out)
    if not launched_as_rank_zero():
        # A DDP child: rank 0 already applied the output policy and holds the lock.
        last = out / CKPT_DIR / LAST
        return train(cfg, last if cfg.resume and last.is_file() else None, module=module)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        ckpt = prepare_out(cfg, out)
        save_resolved(cfg, out)
        extra = {"status": "running", "resumed_from": str(ckpt or "")}
        RunInfo.collect(
            STAGE, config_hash(cfg, exclude=HASH_EXCLUDE), inputs=_inputs(cfg), extra=extra
        ).write(out)
        return train(cfg, ckpt, module=module)
