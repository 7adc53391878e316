"""Typed config of the feature-extraction stage (``conf/extract.yaml``) and its validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hipt.config import WandbConfig, non_result
from hipt.errors import ConfigError
from hipt.slides.decode import DECODES
from hipt.stain import StainConfig

DTYPES = ("float16", "float32")
ON_STALE = ("recompute", "error")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true")
COMPILE = ("false", "true", "auto")
POSITIVE = ("reader_threads", "prefetch_regions", "regions_per_chunk", "num_nodes")


@dataclasses.dataclass
class ExtractConfig:
    """Settings of ``make extract-features``; ``conf/extract.yaml`` documents the defaults.

    Attributes:
        tiles: output folder of the tile stage (holds ``regions.parquet``).
        out: folder that receives one ``<slide_id>.zarr`` store per slide.
        checkpoint256: ViT-256 weights (official DINO ``.pth`` or our ``.safetensors`` export);
            ``None`` runs with random weights (logged loudly, recorded in every store).
        checkpoint4k: ViT-4K weights, same formats.
        model_256: registry name of the patch encoder.
        model_4k: registry name of the region encoder.
        dtype: storage dtype of the features, ``float16`` or ``float32``.
        skip_background: encode only patches set in the tile stage's patch mask; the others get
            the feature of a blank white patch, computed once.
        batch_size: patches per patch-encoder forward (batches span region boundaries), or
            ``auto``: measured on the device (the fastest size under the memory budget).
        max_batch_mem_gb: activation memory budget of one patch batch; caps the batch size
            (foundation models 50x larger than ViT-S stay bounded).
        num_workers: DataLoader worker processes reading regions (0: read in this process).
        reader_threads: reader threads per worker (or in this process when ``num_workers=0``).
        prefetch_regions: regions read ahead per reader (the bounded queue that caps memory).
        regions_per_chunk: regions per Zarr chunk of ``feats256``.
        backend: slide reader backend (``auto``, ``cucim``, ``openslide``).
        decode: where tiles are decoded on a CUDA run: ``cpu`` (worker processes, pinned
            memory, non-blocking copies), ``gpu_batch`` (cuCIM's batch loader on the GPU) or
            ``auto`` (the measured default, :data:`hipt.slides.decode.AUTO`).
        devices: devices per node (``1``, ``2``, ``-1`` or ``auto``).
        num_nodes: nodes; ``devices * num_nodes > 1`` runs DDP predict, slides sharded by rank.
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``/``cuda``).
        strategy: Lightning strategy; ``auto`` means ``ddp`` when more than one process runs.
        precision: ``auto`` = ``bf16-mixed`` on CUDA, ``32-true`` on CPU (bf16 is slow there).
        tf32: on CUDA, float32 matmuls use TF32 (``false``: IEEE float32, bit-fidelity).
        on_stale: what to do with a store made with other settings (checkpoint, tiling, dtype):
            ``recompute`` it or stop with an ``error`` before anything is written.
        verify_stores: before reusing a store, decode every chunk once (crc32c checksums) so
            a damaged store (disk fault, partial copy) is recomputed; reads each store once.
        overwrite: recompute every store, even complete and matching ones.
        compile: ``torch.compile`` the ViT-256: ``true``, ``false`` or ``auto`` (on when the
            encoder is large and this process has at least ``compile_min_regions`` regions).
        compile_min_regions: threshold for ``compile=auto``.
        seed: seeds random initialisation when a checkpoint is missing (all ranks agree).
        progress: show a progress bar over regions (rank 0).
        stain: stain normalization of the patches before the encoder (off by default);
            recorded in every store (another setting makes stores stale).
        wandb: Weights & Biases settings.
    """

    tiles: str = non_result("???")
    out: str = non_result("data/features")
    checkpoint256: str | None = None
    checkpoint4k: str | None = None
    model_256: str = "vit256_small"
    model_4k: str = "vit4k_xs"
    dtype: str = "float16"
    skip_background: bool = False
    batch_size: int | str = non_result("auto")
    max_batch_mem_gb: float = non_result(4.0)
    num_workers: int = non_result(2)
    reader_threads: int = non_result(1)
    prefetch_regions: int = non_result(2)
    regions_per_chunk: int = non_result(1)
    backend: str = non_result("auto")
    decode: str = non_result("auto")
    devices: int | str = non_result(1)
    num_nodes: int = non_result(1)
    accelerator: str = non_result("auto")
    strategy: str = non_result("auto")
    precision: str = "auto"
    tf32: bool = True
    on_stale: str = non_result("recompute")
    verify_stores: bool = non_result(True)
    overwrite: bool = non_result(False)
    compile: str = non_result("auto")
    compile_min_regions: int = non_result(16)
    seed: int = 0
    progress: bool = non_result(True)
    stain: StainConfig = dataclasses.field(default_factory=StainConfig)
    wandb: WandbConfig = non_result(default_factory=WandbConfig)


def validate(cfg: ExtractConfig) -> None:
    """Raise :class:`ConfigError` naming the first invalid value."""
    if not str(cfg.tiles).strip():
        raise ConfigError("tiles must name the tile stage's output folder (TILES=<folder>)")
    if not str(cfg.out).strip():
        raise ConfigError("out must name a folder (OUT=<folder>)")
    choices = {
        "dtype": DTYPES,
        "on_stale": ON_STALE,
        "precision": PRECISIONS,
        "compile": COMPILE,
        "decode": DECODES,
    }
    for key, allowed in choices.items():
        value = str(getattr(cfg, key)).lower()
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got '{value}'")
    validate_batch(cfg.batch_size, cfg.max_batch_mem_gb)
    cfg.stain.validate()
    for key in POSITIVE:
        if int(getattr(cfg, key)) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    for key in ("num_workers", "compile_min_regions"):
        if int(getattr(cfg, key)) < 0:
            raise ConfigError(f"{key} must be >= 0, got {getattr(cfg, key)}")
    if isinstance(cfg.devices, str) and cfg.devices != "auto":
        raise ConfigError(f"devices must be an integer or 'auto', got '{cfg.devices}'")
    for key in ("checkpoint256", "checkpoint4k"):
        value = getattr(cfg, key)
        if value is not None and not str(value).strip():
            raise ConfigError(f"{key} is empty; leave it out to run with random weights")
    from hipt.models import PATCH_ENCODER, REGION_ENCODER, model_spec

    for key, kind in (("model_256", PATCH_ENCODER), ("model_4k", REGION_ENCODER)):
        name = getattr(cfg, key)
        if model_spec(name).kind != kind:  # an unknown name raises a ConfigError itself
            raise ConfigError(f"{key}={name} is not a {kind.replace('_', ' ')}")


@dataclasses.dataclass
class Encode4KConfig:
    """Settings of ``make encode-4k``; ``conf/encode_4k.yaml`` documents the defaults.

    Attributes:
        features: folder of ``<slide_id>.zarr`` stores; each is replaced atomically.
        checkpoint4k: the new ViT-4K weights (our ``.safetensors`` export or an official
            DINO ``.pth``).
        model_4k: registry name of the ViT-4K; ``None`` takes it from the export's card
            (``vit4k_xs`` for a file without one).
        out: where ``run.json`` / ``summary.json`` go (default ``<features>/encode_4k``).
        batch_size: regions per ViT-4K forward.
        accelerator: ``auto``, ``cpu`` or ``gpu``/``cuda``; the precision is each store's own.
        overwrite: re-encode stores already made with this ViT-4K.
        seed: extraction's seed (enters the config hash of stores with a random ViT-256).
        wandb: Weights & Biases settings.
    """

    features: str = non_result("???")
    checkpoint4k: str = non_result("???")
    model_4k: str | None = None
    out: str | None = non_result(None)
    batch_size: int = non_result(64)
    accelerator: str = non_result("auto")
    overwrite: bool = non_result(False)
    seed: int = 0
    wandb: WandbConfig = non_result(default_factory=WandbConfig)


def validate_encode4k(cfg: Encode4KConfig) -> None:
    """Raise :class:`ConfigError` naming the first invalid value."""
    for key, shortcut in (("features", "FEATURES"), ("checkpoint4k", "CHECKPOINT4K")):
        if not str(getattr(cfg, key) or "").strip():
            raise ConfigError(f"{key} is required ({shortcut}=<...>)")
    if not Path(cfg.checkpoint4k).is_file():
        raise ConfigError(f"checkpoint4k {cfg.checkpoint4k} not found")
    if int(cfg.batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")


def validate_batch(batch_size: int | str, max_batch_mem_gb: float) -> None:
    """``batch_size`` is ``auto`` or >= 1; the memory budget is > 0."""
    if str(batch_size) != "auto" and (not str(batch_size).isdigit() or int(batch_size) < 1):
        raise ConfigError(f"batch_size must be >= 1 or auto, got '{batch_size}'")
    if float(max_batch_mem_gb) <= 0:
        raise ConfigError(f"max_batch_mem_gb must be > 0, got {max_batch_mem_gb}")
