"""Typed config of ``make pretrain-256`` and ``make pretrain-4k`` (one schema, both levels)."""

from __future__ import annotations

import dataclasses
from typing import Any

from hipt.config import WandbConfig, hardware, non_result
from hipt.errors import ConfigError
from hipt.stain import StainConfig

LEVELS = ("256", "4k")


@dataclasses.dataclass
class ModelConfig:
    """Backbone trained by DINO.

    Attributes:
        name: registry key of :func:`hipt.models.build` (``vit256_small``, ``vit4k_xs``, tiny
            test variants).
        drop_path_rate: stochastic depth of the student (the teacher has none, as in DINO).
    """

    name: str = "vit256_small"
    drop_path_rate: float = 0.1


@dataclasses.dataclass
class HeadConfig:
    """DINO projection head (lightly ``DINOProjectionHead``); official HIPT sizes.

    Attributes:
        out_dim: prototypes K of the weight-normed last layer.
        hidden_dim: MLP width.
        bottleneck_dim: width before the last layer.
        norm_last_layer: freeze the weight-norm gain at 1 (DINO ``norm_last_layer``).
        batch_norm: BatchNorm in the MLP (off for ViTs).
    """

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True
    batch_norm: bool = False


@dataclasses.dataclass
class LossConfig:
    """DINO loss (lightly ``DINOLoss``): centering plus teacher-temperature warm-up.

    Attributes:
        teacher_temp: teacher softmax temperature after warm-up.
        warmup_teacher_temp: teacher temperature at epoch 0 (linear warm-up to ``teacher_temp``).
        warmup_teacher_temp_epochs: epochs of that warm-up (0 = constant, HIPT's default).
        student_temp: student softmax temperature.
        center_momentum: EMA momentum of the teacher-output center.
    """

    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9


@dataclasses.dataclass
class OptimConfig:
    """AdamW, cosine schedules and the DINO training tricks.

    Attributes:
        lr: peak learning rate per ``lr_reference_batch`` samples; the peak used is
            ``lr * global_batch / lr_reference_batch`` (global = per-device batch x devices x
            nodes x accumulation).
        lr_reference_batch: batch size ``lr`` refers to (256 in DINO).
        min_lr: learning rate at the last step (cosine decay after warm-up).
        warmup_epochs: linear warm-up from 0, in epochs of the train loader.
        warmup_steps: warm-up in optimizer steps; overrides ``warmup_epochs`` when set.
        weight_decay: weight decay at step 0 (cosine to ``weight_decay_end``); biases and
            norm parameters are never decayed.
        weight_decay_end: weight decay at the last step.
        momentum_teacher: teacher EMA momentum at step 0 (cosine to ``momentum_teacher_end``).
        momentum_teacher_end: teacher EMA momentum at the last step.
        clip_grad: per-parameter gradient-norm clip as in DINO; 0 disables.
        freeze_last_layer_epochs: epochs during which the head's last layer gets no update.
        freeze_last_layer_steps: the same in optimizer steps; overrides the epochs when set.
        betas: AdamW betas.
    """

    lr: float = 5e-4
    lr_reference_batch: int = 256
    min_lr: float = 1e-6
    warmup_epochs: float = 10.0
    warmup_steps: int | None = None
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    momentum_teacher_end: float = 1.0
    clip_grad: float = 3.0
    freeze_last_layer_epochs: float = 1.0
    freeze_last_layer_steps: int | None = None
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])


@dataclasses.dataclass
class DataConfig:
    """Inputs and loading.

    Attributes:
        tiles: tile-stage output folder (``regions.parquet``) or the parquet file (level 256).
        features: folder of ``<slide>.zarr`` feature stores, or one store (level 4k).
        batch_size: samples per device per step (DINO ``batch_size_per_gpu``).
        num_workers: DataLoader worker processes per device.
        patch_cache: optional folder for a uint8 cache of every tissue patch (level 256); built
            once, then patches are read from it instead of the slides.
        backend: slide reader backend for :func:`hipt.slides.open_slide`.
        min_tissue_patches: level 4k: skip regions with fewer tissue patches.
        max_samples: use at most this many patches/regions (evenly spaced); ``None`` = all.
        pin_memory: pin host memory when training on CUDA.
    """

    tiles: str | None = non_result(None)
    features: str | None = non_result(None)
    batch_size: int = 64
    num_workers: int = non_result(8)
    patch_cache: str | None = non_result(None)
    backend: str = non_result("auto")
    min_tissue_patches: int = 1
    max_samples: int | None = None
    pin_memory: bool = non_result(True)


@dataclasses.dataclass
class TileCropConfig:
    """DINO multi-crop of 256-px patches (lightly ``DINOTransform``), normalized to [-1, 1].

    Attributes:
        global_crop_size: side of the 2 global views.
        global_crop_scale: area range of the global random-resized crops.
        local_crop_size: side of the local views.
        local_crop_scale: area range of the local crops.
        n_local_crops: number of local views.
        hflip_prob: horizontal flip probability.
        vflip_prob: vertical flip probability (tissue has no up or down).
        rot90_prob: probability of a 90-degree rotation.
        color_jitter_prob: probability of colour jitter.
        brightness: ColorJitter brightness.
        contrast: ColorJitter contrast.
        saturation: ColorJitter saturation.
        hue: ColorJitter hue (small for H&E: large shifts leave the stain colour space).
        grayscale_prob: probability of grayscale.
        blur_probs: Gaussian blur probability of (global 1, global 2, locals).
        solarization_prob: solarization probability of the second global view.
        mean: normalization mean (HIPT: 0.5, reference/hipt.md 3.4).
        std: normalization std (HIPT: 0.5).
    """

    global_crop_size: int = 224
    global_crop_scale: list[float] = dataclasses.field(default_factory=lambda: [0.4, 1.0])
    local_crop_size: int = 96
    local_crop_scale: list[float] = dataclasses.field(default_factory=lambda: [0.05, 0.4])
    n_local_crops: int = 8
    hflip_prob: float = 0.5
    vflip_prob: float = 0.5
    rot90_prob: float = 0.0
    color_jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.05
    grayscale_prob: float = 0.2
    blur_probs: list[float] = dataclasses.field(default_factory=lambda: [1.0, 0.1, 0.5])
    solarization_prob: float = 0.2
    mean: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.5, 0.5])


@dataclasses.dataclass
class GridCropConfig:
    """DINO crops of ``[D, 16, 16]`` feature grids (official: integer crops + horizontal flip).

    Attributes:
        global_crop_size: side of the 2 global crops (14 ~ 224/256).
        local_crop_size: side of the local crops (6 ~ 96/256).
        n_local_crops: number of local crops.
        hflip_prob: horizontal flip probability.
        vflip_prob: vertical flip probability (off in HIPT).
        rot90_prob: probability of a random 90/180/270-degree rotation (off in HIPT).
    """

    global_crop_size: int = 14
    local_crop_size: int = 6
    n_local_crops: int = 8
    hflip_prob: float = 0.5
    vflip_prob: float = 0.0
    rot90_prob: float = 0.0


@dataclasses.dataclass
class TrainerConfig:
    """``lightning.Trainer`` arguments (SLURM variables are picked up by Lightning itself).

    Attributes:
        accelerator: ``auto``, ``cpu``, ``gpu``/``cuda``.
        devices: devices per node (``auto``, an int or a list).
        num_nodes: nodes.
        strategy: ``auto`` or ``ddp`` (``ddp_spawn`` is not recommended).
        precision: ``auto`` = ``bf16-mixed`` on CUDA, ``32-true`` on CPU; or any Lightning value.
        max_epochs: epochs (DINO: 100); -1 with ``max_steps`` for step-based runs.
        max_steps: optimizer steps; -1 = derived from ``max_epochs``.
        accumulate_grad_batches: micro-batches per optimizer step.
        limit_train_batches: batches per epoch (int) or fraction (float).
        log_every_n_steps: logging interval.
        deterministic: ``torch.use_deterministic_algorithms``.
        tf32: on CUDA, float32 matmuls use TF32 (``false``: IEEE float32); CPU stays IEEE.
        collective_timeout_s: seconds a DDP process waits in a collective (gradient all-reduce,
            barrier) for the others before it fails, so that a process that died or hangs ends
            the run instead of stalling it (Lightning's default is 1800 s). Applies to
            ``strategy: ddp`` and to ``auto`` when it runs several processes.
    """

    accelerator: str = hardware("auto")
    devices: Any = hardware("auto")
    num_nodes: int = hardware(1)
    strategy: str = hardware("auto")
    precision: str = hardware("auto")
    tf32: bool = hardware(True)
    max_epochs: int = 100
    max_steps: int = -1
    accumulate_grad_batches: int = 1
    limit_train_batches: Any = 1.0
    log_every_n_steps: int = non_result(50)
    deterministic: bool = False
    collective_timeout_s: int = non_result(600)


@dataclasses.dataclass
class PretrainConfig:
    """Settings of the DINO pretraining stage; see ``conf/pretrain_256.yaml`` / ``_4k.yaml``.

    Paths, logging and worker counts are declared ``non_result``; device count, nodes,
    strategy and precision ``hardware``: both may change when an interrupted run is resumed
    (a different device count changes the global batch, which ``DinoModule`` reports).

    Attributes:
        level: ``256`` (ViT-256 on patches) or ``4k`` (ViT-4K on feature grids).
        out: output folder (checkpoints, exported backbone, provenance, W&B files).
        resume: continue the run in ``out`` from ``checkpoints/last.ckpt``.
        overwrite: delete this stage's outputs in ``out`` and start over.
        seed: seed of model init, data order and augmentations.
        checkpoint_every_n_steps: interval of ``checkpoints/last.ckpt`` (also written when a
            one-process run is interrupted; a multi-process run resumes from the last interval,
            as saving then could deadlock on the processes that did not fail).
        stain: level 256: stain normalization of the patches before the views are cut (off by
            default); recorded in the exported ViT-256's card.
    """

    level: str = "256"
    out: str = non_result("???")
    resume: bool = non_result(False)
    overwrite: bool = non_result(False)
    seed: int = 0
    checkpoint_every_n_steps: int = non_result(1000)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    head: HeadConfig = dataclasses.field(default_factory=HeadConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    crops256: TileCropConfig = dataclasses.field(default_factory=TileCropConfig)
    crops4k: GridCropConfig = dataclasses.field(default_factory=GridCropConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    stain: StainConfig = dataclasses.field(default_factory=StainConfig)
    wandb: WandbConfig = non_result(default_factory=WandbConfig)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: PretrainConfig) -> None:
    """Raise :class:`ConfigError` naming the first invalid value."""
    _check(cfg.level in LEVELS, f"level must be one of {', '.join(LEVELS)}, got '{cfg.level}'")
    if cfg.level == "256":
        _check(bool(cfg.data.tiles), "level 256 needs data.tiles (TILES=<tile-stage output>)")
    else:
        _check(bool(cfg.data.features), "level 4k needs data.features (FEATURES=<store folder>)")
    _check(cfg.data.batch_size >= 1, f"data.batch_size must be >= 1, got {cfg.data.batch_size}")
    cfg.stain.validate()
    _check(
        cfg.level == "256" or cfg.stain.method == "none",
        "stain applies to pixels (level 256); level 4k reads features made with the stores' stain",
    )
    _check(cfg.data.num_workers >= 0, "data.num_workers must be >= 0")
    _check(not (cfg.resume and cfg.overwrite), "resume=true and overwrite=true exclude each other")
    _check(cfg.checkpoint_every_n_steps >= 1, "checkpoint_every_n_steps must be >= 1")
    _check(cfg.head.out_dim >= 2, "head.out_dim must be >= 2")
    _check(cfg.loss.teacher_temp > 0 and cfg.loss.student_temp > 0, "temperatures must be > 0")
    _check(
        0.0 <= cfg.optim.momentum_teacher <= cfg.optim.momentum_teacher_end <= 1.0,
        "need 0 <= optim.momentum_teacher <= optim.momentum_teacher_end <= 1",
    )
    _check(cfg.optim.lr > 0 and cfg.optim.min_lr >= 0, "optim.lr must be > 0, min_lr >= 0")
    _check(cfg.optim.clip_grad >= 0, "optim.clip_grad must be >= 0 (0 disables)")
    _check(len(cfg.optim.betas) == 2, "optim.betas needs two values")
    _check(
        cfg.trainer.max_epochs > 0 or cfg.trainer.max_steps > 0,
        "set trainer.max_epochs or trainer.max_steps",
    )
    _check(
        cfg.trainer.collective_timeout_s > 0,
        f"trainer.collective_timeout_s must be > 0 seconds, got {cfg.trainer.collective_timeout_s}",
    )
    c4 = cfg.crops4k
    _check(
        0 < c4.local_crop_size <= c4.global_crop_size <= 16,
        "need 0 < crops4k.local_crop_size <= crops4k.global_crop_size <= 16",
    )
    c2 = cfg.crops256
    _check(0 < c2.local_crop_size <= c2.global_crop_size, "crops256 sizes must be > 0")
    for name in ("global_crop_scale", "local_crop_scale"):
        lo, hi = getattr(c2, name)
        _check(0 < lo <= hi <= 1, f"crops256.{name} must satisfy 0 < min <= max <= 1")
    _check(len(c2.blur_probs) == 3, "crops256.blur_probs needs 3 values (global1, global2, local)")
