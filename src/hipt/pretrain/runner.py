"""The pretrain stage: output-folder policy, model/data/Trainer construction, resume and export."""

from __future__ import annotations

import datetime
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, cast

import lightning
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ThroughputMonitor
from lightning.pytorch.strategies import DDPStrategy, Strategy
from omegaconf import OmegaConf

from hipt.config import HARDWARE, NON_RESULT, keys_with_role, to_container
from hipt.errors import ConfigError, HiptError, StaleOutputError
from hipt.features.store import read_meta
from hipt.io import remove_path
from hipt.models import Vit4K, Vit256, build, model_spec
from hipt.models.patch_vit import feature_width, token_size
from hipt.models.runtime import describe_device, resolve_precision, set_fp32_matmul
from hipt.models.spec import PATCH_ENCODER, REGION_ENCODER
from hipt.pretrain.callbacks import RankSync, SaveOnException
from hipt.pretrain.config import PretrainConfig, validate
from hipt.pretrain.datamodules import (
    DinoSample,
    RegionGridDataModule,
    TileDataModule,
    find_feature_stores,
)
from hipt.pretrain.dino import DinoModule
from hipt.pretrain.export import BACKBONE, SIDECAR, export_teacher
from hipt.pretrain.heads import MultiCropWrapper, build_head
from hipt.pretrain.loss import DinoCriterion
from hipt.pretrain.schedules import DinoOptim, global_batch_size
from hipt.pretrain.transforms import GridMultiCrop, StainedViews, TileMultiCrop
from hipt.provenance import sha256_file
from hipt.stage import StageRun, is_launch_rank_zero
from hipt.stain import StainNormalizer, stain_text

log = logging.getLogger(__name__)

STAGE = "pretrain"
CKPT_DIR = "checkpoints"
LAST = "last.ckpt"
OUTPUTS = (CKPT_DIR, BACKBONE, SIDECAR, "run.json", "resolved_config.yaml", "wandb")
#: The model kind each level trains.
LEVEL_KIND = {"256": PATCH_ENCODER, "4k": REGION_ENCODER}


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
    free = keys_with_role(PretrainConfig, NON_RESULT) + keys_with_role(PretrainConfig, HARDWARE)
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
    name, level = cfg.model.name, cfg.level
    kind = model_spec(name).kind
    if kind != LEVEL_KIND[level]:
        want = LEVEL_KIND[level].replace("_", " ")
        raise ConfigError(
            f"model.name '{name}' is a {kind.replace('_', ' ')}, which level {level} cannot "
            f"train (it trains a {want})"
        )
    if level == "256":
        check_crop_sizes(cfg, name)
    width: dict[str, Any] = (
        {} if level == "256" else {"input_dim": stores_feature_dim(cfg.data.features)}
    )
    student = cast(Vit256 | Vit4K, build(name, drop_path_rate=cfg.model.drop_path_rate, **width))
    teacher = build(name, **width)
    h = cfg.head
    heads = [
        build_head(
            feature_width(student),
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
    common: dict[str, Any] = {
        "batch_size": d.batch_size,
        "num_workers": d.num_workers,
        "seed": cfg.seed,
        "max_samples": d.max_samples,
        "pin_memory": d.pin_memory,
    }
    if cfg.level == "256":
        if d.tiles is None:  # validate() already rejects this
            raise ConfigError("level 256 needs data.tiles (TILES=<tile-stage output>)")
        views = TileMultiCrop(**to_container(cfg.crops256))
        stain = StainNormalizer.from_config(cfg.stain, "cpu")
        transform = StainedViews(stain, views) if stain.enabled else views
        return TileDataModule(
            d.tiles, transform, backend=d.backend, patch_cache=d.patch_cache,
            stain=stain_text(stain), **common,
        )  # fmt: skip
    if d.features is None:  # validate() already rejects this
        raise ConfigError("level 4k needs data.features (FEATURES=<store folder>)")
    grid = GridMultiCrop(**to_container(cfg.crops4k))
    feature_dim = int(cast(Vit4K, module.student.backbone).input_dim)
    return RegionGridDataModule(
        d.features, feature_dim, grid, min_tissue_patches=d.min_tissue_patches, **common
    )


def check_crop_sizes(cfg: PretrainConfig, name: str) -> None:
    """DINO's views must be whole tokens of the patch encoder (14-px tokens: 224 and 98 px).

    Raises:
        ConfigError: a crop size that is not a multiple of the token size (one line).
    """
    with torch.device("meta"):  # the architecture only: no memory, no init time
        probe = build(name)
    try:
        token = token_size(probe)
    except ValueError:  # not a ViT: any size works
        return
    for key in ("global_crop_size", "local_crop_size"):
        side = int(getattr(cfg.crops256, key))
        if side % token:
            fit = max(token, round(side / token) * token)
            raise ConfigError(
                f"crops256.{key}={side} is not a multiple of {name}'s {token}-px tokens; "
                f"use e.g. crops256.{key}={fit}"
            )


def stores_feature_dim(features: str | None) -> int:
    """``D`` of the stores' ``feats256`` (the ViT-4K's ``input_dim``), read from one store.

    The data module checks every store against it (a cohort mixing encoders is refused).
    """
    if features is None:  # validate() already rejects this
        raise ConfigError("level 4k needs data.features (FEATURES=<store folder>)")
    for path in find_feature_stores(features):
        meta = read_meta(path)
        if meta is not None:
            return int(meta.feature_dim_256)
    raise HiptError(f"{features}: no readable feature store; rerun `make extract-features`")


def cpu_threads_per_process(trainer: Trainer) -> None:
    """Share the cores between CPU DDP processes (as torchrun does) unless OMP_NUM_THREADS is set.

    Each process would otherwise start one intra-op thread per core, and the oversubscribed
    OpenMP threads spin against each other (measured: tens of times slower steps).
    """
    n = trainer.num_devices
    if trainer.strategy.root_device.type != "cpu" or n < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // n))


def n_samples(batch: DinoSample) -> int:
    """Samples in a collated DINO batch (the first view's batch dimension)."""
    return int(batch.data[0].shape[0])


def ddp_strategy(cfg: PretrainConfig) -> DDPStrategy:
    """Lightning's DDP with ``trainer.collective_timeout_s`` instead of its 30-minute timeout."""
    return DDPStrategy(timeout=datetime.timedelta(seconds=cfg.trainer.collective_timeout_s))


def build_trainer(
    cfg: PretrainConfig, out: Path, logger: Any, callbacks: list[Callback]
) -> Trainer:
    """``lightning.Trainer`` from ``cfg.trainer`` (DDP, precision, limits) and our callbacks.

    ``strategy: ddp`` gets :func:`ddp_strategy`; so does ``auto`` when Lightning resolves it to
    script-launched DDP (several devices or nodes): the Trainer is then built a second time with
    it, as Lightning takes the timeout only when the strategy is constructed. ``auto`` resolved
    to fork-started DDP (interactive sessions) and other strategy names keep Lightning's
    defaults.
    """
    t = cfg.trainer
    ckpt_dir = out / CKPT_DIR

    def make(strategy: str | Strategy) -> Trainer:
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
            strategy=strategy,
            precision=resolve_precision(t.precision, t.accelerator),  # type: ignore[arg-type]
            max_epochs=t.max_epochs,
            max_steps=t.max_steps,
            accumulate_grad_batches=t.accumulate_grad_batches,
            limit_train_batches=t.limit_train_batches,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            log_every_n_steps=t.log_every_n_steps,
            deterministic=t.deterministic,
            logger=logger,
            callbacks=[every, on_error, *callbacks],  # a new list: Lightning extends it
            use_distributed_sampler=False,
            default_root_dir=str(out),
            enable_model_summary=False,
            enable_progress_bar=sys.stderr.isatty(),
        )

    if t.strategy == "ddp":
        return make(ddp_strategy(cfg))
    trainer = make(t.strategy)
    resolved = trainer.strategy
    if (
        t.strategy == "auto"
        and type(resolved) is DDPStrategy
        and not (resolved.launcher is not None and resolved.launcher.is_interactive_compatible)
    ):
        trainer = make(ddp_strategy(cfg))
    return trainer


def _inputs(cfg: PretrainConfig) -> list[str]:
    return [str(cfg.data.tiles if cfg.level == "256" else cfg.data.features)]


def train(
    cfg: PretrainConfig,
    ckpt_path: Path | None,
    run: StageRun,
    callbacks: list[Callback] | None = None,
    module: DinoModule | None = None,
) -> int:
    """Fit, checkpoint the end state, export the teacher and write ``run.json`` (rank 0).

    Args:
        cfg: validated stage config.
        ckpt_path: Lightning checkpoint to resume from.
        run: the stage run holding ``cfg.out`` (its W&B logger is used).
        callbacks: extra callbacks (tests).
        module: the module from :func:`build_module` (built here when omitted).
    """
    out = Path(cfg.out)
    module = module if module is not None else build_module(cfg)
    data = build_datamodule(cfg, module)
    data.setup("fit")
    sync = RankSync()
    throughput = ThroughputMonitor(batch_size_fn=n_samples)
    trainer = build_trainer(cfg, out, run.logger, [throughput, sync, *(callbacks or [])])
    cpu_threads_per_process(trainer)
    device = trainer.strategy.root_device
    fp32 = set_fp32_matmul(device, cfg.trainer.tf32)
    log.info("pretrain-%s on %d process(es): %s", cfg.level, trainer.world_size,
             describe_device(device, str(trainer.precision), fp32))  # fmt: skip
    start_step, t0 = trainer.global_step, time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None)
    seconds = time.perf_counter() - t0
    trainer.save_checkpoint(out / CKPT_DIR / LAST, weights_only=False)
    if trainer.is_global_zero:
        batch = global_batch_size(cfg.data.batch_size, trainer.world_size,
                                  trainer.accumulate_grad_batches)  # fmt: skip
        steps = trainer.global_step - start_step
        speed = {
            "fit_seconds": round(seconds, 3),
            "steps_per_s": round(steps / seconds, 4) if seconds > 0 else None,
            "samples_per_s": round(steps * batch / seconds, 2) if seconds > 0 else None,
            **{k: float(v) for k, v in trainer.logged_metrics.items() if k.endswith("_per_sec")},
        }
        _finish_run(cfg, trainer, module, data, ckpt_path, batch, speed, sync, run)
    return 0


def _finish_run(
    cfg: PretrainConfig,
    trainer: Trainer,
    module: DinoModule,
    data: TileDataModule | RegionGridDataModule,
    ckpt_path: Path | None,
    global_batch: int,
    speed: dict[str, Any],
    sync: RankSync,
    run: StageRun,
) -> None:
    """Rank 0 after training: check rank agreement, export the teacher, write ``run.json``."""
    if len(set(sync.digests)) > 1:
        raise HiptError(f"ranks ended with different weights ({sync.digests}); DDP is broken")
    upstream = data.upstream()
    progress = {
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "world_size": trainer.world_size,
        "global_batch": global_batch,
        "precision": str(trainer.precision),
        "resumed_from": str(ckpt_path or ""),
    }
    meta = {
        "stage": STAGE,
        "level": cfg.level,
        "config_hash": run.config_hash,
        "teacher": True,
        "input": _inputs(cfg)[0],
        "upstream": upstream,
        **progress,
    }
    trained_on = data.trained_on()
    path = export_teacher(module.teacher.backbone, Path(cfg.out), meta, trained_on)
    run.done({**progress, "upstream": upstream, "throughput": speed,
              "rank_digests": sync.digests, "backbone_sha256": sha256_file(path)})  # fmt: skip
    log.info("pretrain-%s: %d steps, %s -> %s", cfg.level, trainer.global_step, speed, path)


def run(cfg: PretrainConfig) -> int:
    """Stage entry (``pipelines.pretrain``): validate, lock ``out``, then :func:`train`."""
    validate(cfg)
    module = build_module(cfg)  # model errors surface before anything is written
    out = Path(cfg.out)
    rank0 = is_launch_rank_zero()
    with StageRun(
        STAGE, cfg, out, inputs=_inputs(cfg), rank_zero=rank0,
        prepare=lambda: prepare_out(cfg, out), wandb_name=f"{STAGE}-{cfg.level}",
    ) as stage:  # fmt: skip
        if rank0:
            ckpt = stage.prepared
            stage.record("running", {"resumed_from": str(ckpt or "")})
        else:  # a DDP child: rank 0 already applied the output policy and holds the lock
            last = out / CKPT_DIR / LAST
            ckpt = last if cfg.resume and last.is_file() else None
        return train(cfg, ckpt, stage, module=module)
