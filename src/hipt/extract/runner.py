"""The extract-features stage: plan, DDP predict over sharded slides, summary and provenance."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
from lightning.pytorch import Trainer
from torch import nn

from hipt.errors import ConfigError, StaleOutputError
from hipt.extract.batching import BatchChoice, choose_batch_size
from hipt.extract.config import ExtractConfig, validate
from hipt.extract.datamodule import ExtractDataModule
from hipt.extract.encoder import CompiledOrEager, RegionEncoder
from hipt.extract.module import ExtractModule
from hipt.extract.plan import EncoderInfo, Plan, expected_meta, make_plan, shard
from hipt.extract.writer import FeatureWriter, SlideResult, SlideStoreSink
from hipt.features.schema import FeatureStoreMeta
from hipt.models.patch_vit import feature_width
from hipt.models.preprocess import PatchPreprocess, norm_text
from hipt.models.runtime import describe_device, resolve_precision, set_fp32_matmul, uses_cuda
from hipt.models.vit4k import region_encoder_for
from hipt.provenance import git_state, sha256_file
from hipt.shards import shard_balance
from hipt.slides.decode import DecodePlan, resolve_decode
from hipt.slides.tiles import SlideTiles, load_tiles, regions_file
from hipt.stage import StageRun, is_launch_rank_zero
from hipt.stain import StainNormalizer, stain_text

if TYPE_CHECKING:
    from hipt.models import Vit4K

log = logging.getLogger(__name__)

STAGE = "extract"
# Lightning notices that are expected here (the stream batches itself; no sampler indices).
QUIET_WARNINGS = (
    r"Couldn't infer the batch indices",
    r".*isinstance\(treespec, LeafSpec\)",
    r"The '(predict|val|test)_dataloader' does not have many workers",
)
#: Parameters above which ``compile=auto`` may compile (tiny test models never are).
COMPILE_MIN_PARAMS = 5_000_000


def _checkpoint_sha(path: str | None, what: str) -> str | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise ConfigError(f"{what} {path} not found")
    return sha256_file(path)


class Encoders(NamedTuple):
    """The frozen encoders of a run, the patch preprocessing, and what identifies them."""

    vit256: nn.Module
    vit4k: nn.Module
    preprocess: PatchPreprocess
    info: EncoderInfo


def build_encoders(cfg: ExtractConfig, patch_px: int = 256) -> Encoders:
    """Build both encoders (seeded, so random weights agree across ranks and reruns).

    The ViT-4K is built for the patch encoder's width (``input_dim = D``); its checkpoint must
    have been trained on ``D``-d grids.
    """
    from hipt.models import build, model_spec

    torch.manual_seed(cfg.seed)
    vit256 = build(cfg.model_256, checkpoint=cfg.checkpoint256)
    d256 = feature_width(vit256)
    vit4k = cast("Vit4K", region_encoder_for(cfg.model_4k, cfg.checkpoint4k, d256))
    pre = model_spec(cfg.model_256).preprocessing
    if pre is None:  # the spec check of validate() makes this unreachable
        raise ConfigError(f"{cfg.model_256} declares no preprocessing")
    stain = StainNormalizer.from_config(cfg.stain, "cpu")
    preprocess = PatchPreprocess(pre, stain if stain.enabled else None)
    info = EncoderInfo(
        model_256=cfg.model_256,
        model_4k=cfg.model_4k,
        checkpoint_256_sha256=_checkpoint_sha(cfg.checkpoint256, "checkpoint256"),
        checkpoint_4k_sha256=_checkpoint_sha(cfg.checkpoint4k, "checkpoint4k"),
        feature_dim_256=d256,
        feature_dim_4k=int(vit4k.embed_dim),
        dtype=cfg.dtype,
        skip_background=cfg.skip_background,
        seed=cfg.seed,
        input_px_256=pre.input_px,
        norm_256=norm_text(pre, patch_px),
        stain=stain_text(stain),
    )
    return Encoders(vit256.eval(), vit4k.eval(), preprocess, info)


def _warn_random(info: EncoderInfo) -> None:
    pairs = (
        ("checkpoint256", info.checkpoint_256_sha256),
        ("checkpoint4k", info.checkpoint_4k_sha256),
    )
    missing = [name for name, sha in pairs if sha is None]
    bar = "!" * 78
    log.warning(bar)
    log.warning("RANDOM WEIGHTS: no %s given; features are NOT the pretrained HIPT features.",
                " / ".join(missing))  # fmt: skip
    log.warning("Every store records random_weights=true; pass CHECKPOINT256= CHECKPOINT4K=.")
    log.warning(bar)


def _want_compile(cfg: ExtractConfig, vit256: nn.Module, n_regions: int) -> bool:
    mode = str(cfg.compile).lower()
    if mode != "auto":
        return mode == "true"
    params = sum(p.numel() for p in vit256.parameters())
    return params >= COMPILE_MIN_PARAMS and n_regions / _world(cfg) >= cfg.compile_min_regions


def _world(cfg: ExtractConfig) -> int:
    """Processes the configured devices and nodes start (``auto``/``-1`` devices count as 1)."""
    return (cfg.devices if isinstance(cfg.devices, int) and cfg.devices > 0 else 1) * cfg.num_nodes


def _summary(
    results: list[SlideResult],
    skipped: list[SlideTiles],
    stale: dict[str, str],
    extra: dict[str, Any],
) -> dict[str, Any]:
    ok = [r for r in results if r.status == "ok"]
    failed = [r for r in results if r.status == "failed"]
    n_enc = sum(r.n_regions for r in ok)
    secs = float(extra.get("seconds", 0.0))
    return {
        "stage": STAGE,
        **{k: v for k, v in extra.items() if k != "seconds"},
        "totals": {
            "slides": len(results) + len(skipped),
            "ok": len(ok),
            "skipped": len(skipped),
            "failed": len(failed),
            "regions_encoded": n_enc,
            "seconds": round(secs, 3),
            "regions_per_s": round(n_enc / secs, 4) if secs > 0 else None,
        },
        "ok": [
            {"slide_id": r.slide_id, "n_regions": r.n_regions, "seconds": r.seconds} for r in ok
        ],
        "failed": [{"slide_id": r.slide_id, "error": r.error} for r in failed],
        "skipped": [{"slide_id": j.slide_id, "n_regions": j.n_regions} for j in skipped],
        "recomputed": {k: v for k, v in stale.items() if k in {r.slide_id for r in results}},
    }


def _predict(
    cfg: ExtractConfig,
    jobs: list[SlideTiles],
    metas: list[FeatureStoreMeta],
    plan: Plan,
    encoders: Encoders,
    batch_size: int,
    precision: str,
    decode: DecodePlan,
    logger: Any,
) -> tuple[list[SlideResult] | None, int]:
    """Run Lightning predict over ``plan.todo``.

    Returns:
        ``(results, world size)``: rank 0 gets every rank's results, the others None.
    """
    vit256, vit4k, preprocess = encoders.vit256, encoders.vit4k, encoders.preprocess
    n_todo = sum(jobs[i].n_regions for i in plan.todo)
    compiled = _want_compile(cfg, vit256, n_todo)
    if compiled:
        log.info("compiling %s with torch.compile", cfg.model_256)
        vit256 = CompiledOrEager(vit256)
    encoder = RegionEncoder(vit256, vit4k, pad_to=batch_size if compiled else None,
                            preprocess=preprocess)  # fmt: skip
    module = ExtractModule(encoder, cfg.skip_background, jobs[plan.todo[0]].geometry.patch_px)
    data = ExtractDataModule(
        jobs, plan.todo, plan.fingerprint(jobs), batch_size, cfg.num_workers,
        cfg.reader_threads, cfg.prefetch_regions, cfg.skip_background, cfg.backend, decode.mode,
    )  # fmt: skip
    sink = SlideStoreSink(Path(cfg.out), jobs, metas, cfg.regions_per_chunk)
    writer = FeatureWriter(sink, progress=cfg.progress)
    multi = cfg.devices in ("auto", -1) or int(cfg.devices) * cfg.num_nodes > 1
    trainer = Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy="ddp" if cfg.strategy == "auto" and multi else cfg.strategy,
        precision=precision,  # type: ignore[arg-type]
        logger=logger,
        callbacks=[writer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        inference_mode=True,
        default_root_dir=cfg.out,
    )
    with warnings.catch_warnings():
        for msg in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=msg)
        trainer.predict(module, datamodule=data, return_predictions=False)
    return (writer.all_results if trainer.is_global_zero else None), trainer.world_size


def run(cfg: ExtractConfig) -> int:
    """Extract ViT-256 / ViT-4K features of every region in ``cfg.tiles`` into ``cfg.out``.

    Returns:
        0 when every slide has a complete store, 1 when any slide failed (the others are kept).

    Raises:
        ConfigError: invalid settings.
        StaleOutputError: stale stores and ``on_stale=error`` (nothing is written).
        LockedError: another run holds ``cfg.out``.
    """
    validate(cfg)
    rank0 = is_launch_rank_zero()
    if not rank0:
        logging.getLogger("hipt").setLevel(logging.WARNING)
    out = Path(cfg.out)
    tiles = load_tiles(cfg.tiles)
    jobs = tiles.slides
    encoders = build_encoders(cfg, jobs[0].geometry.patch_px if jobs else 256)
    info = encoders.info
    precision = resolve_precision(cfg.precision, cfg.accelerator)
    device = torch.device("cuda" if uses_cuda(cfg.accelerator) else "cpu")
    decode = resolve_decode(cfg.decode, device.type, cfg.backend)
    info = dataclasses.replace(info, precision=precision, decode=decode.mode,
                               fp32_matmul=set_fp32_matmul(device, cfg.tf32))  # fmt: skip
    if info.random_weights and rank0:
        _warn_random(info)
    sha, dirty = git_state()
    code_version = None if sha is None else f"{sha}{'-dirty' if dirty else ''}"
    metas = [expected_meta(j, info, tiles.tiling_hash, code_version) for j in jobs]
    plan = make_plan(jobs, metas, out, cfg.overwrite, verify=cfg.verify_stores)
    if plan.stale and cfg.on_stale == "error":
        raise StaleOutputError(
            f"{len(plan.stale)} store(s) in {out} were made with other settings ("
            + "; ".join(f"{k}: {v}" for k, v in list(plan.stale.items())[:3])
            + "); rerun with on_stale=recompute or use another OUT"
        )
    inputs: list[str | Path] = [
        regions_file(cfg.tiles),
        *(p for p in (cfg.checkpoint256, cfg.checkpoint4k) if p),
    ]
    with StageRun(STAGE, cfg, out, inputs=inputs, rank_zero=rank0) as run:
        if rank0:
            for sid, reason in plan.stale.items():
                log.warning("%s: existing store is stale, recomputing (%s)", sid, reason)
            n_todo = sum(jobs[i].n_regions for i in plan.todo)
            log.info("extract: %s; %s", describe_device(device, precision, info.fp32_matmul),
                     decode.reason)  # fmt: skip
            log.info(
                "extract: %d slide(s): %d to encode (%d regions), %d complete and skipped",
                len(jobs), len(plan.todo), n_todo, len(plan.skipped),
            )  # fmt: skip
        t0 = time.perf_counter()
        results: list[SlideResult] | None = []
        world = 1
        batch: BatchChoice | None = None
        if plan.todo:
            batch = _batch_size(cfg, encoders, jobs, plan, precision)
            results, world = _predict(
                cfg, jobs, metas, plan, encoders, batch.batch_size, precision, decode, run.logger
            )
        if results is None:  # a DDP child: rank 0 writes the summary
            return 0
        extra = {
            "config_hash": run.config_hash,
            "peak_gpu_memory_gb": _peak_gpu_memory_gb(),
            "random_weights": info.random_weights,
            "precision": precision,
            "fp32_matmul": info.fp32_matmul,
            "decode": decode.to_dict(),
            "dtype": cfg.dtype,
            "skip_background": cfg.skip_background,
            "seconds": time.perf_counter() - t0,
            "shards": _balance(jobs, plan.todo, world),
            "batch": batch.to_dict() if batch else None,
            "stain": _stain_counts(encoders, info.stain),
        }
        skipped = [j for j in jobs if j.slide_id in set(plan.skipped)]
        summary = _summary(results, skipped, plan.stale, extra)
        run.write_summary(summary)
        if plan.todo:
            totals = {f"total/{k}": v for k, v in summary["totals"].items() if v is not None}
            run.logger.log_metrics(totals)
        run.done({"totals": summary["totals"], "encoders": dataclasses.asdict(info),
                  "precision": precision})  # fmt: skip
        if summary["failed"]:
            run.close_logger(ok=False)
    return _report(summary, out)


def _stain_counts(encoders: Encoders, record: str) -> dict[str, Any]:
    """The stain setting and how many patches it normalized or passed through (this rank)."""
    stain = encoders.preprocess.stain
    if not isinstance(stain, StainNormalizer):
        return {"record": record}
    return {"record": record, "normalized": stain.n_normalized,
            "passed_through": stain.n_passthrough}  # fmt: skip


def _batch_size(
    cfg: ExtractConfig, encoders: Encoders, jobs: list[SlideTiles], plan: Plan, precision: str
) -> BatchChoice:
    """The patch batch of this process: measured on its device (``batch_size=auto``)."""
    device = torch.device("cpu")
    if uses_cuda(cfg.accelerator):
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    masks = [jobs[i].patch_mask for i in plan.todo]
    patches = sum(int(m.sum()) if cfg.skip_background else m.size for m in masks)
    per_rank = patches // _world(cfg)
    info = encoders.info
    model = encoders.vit256.to(device)
    try:
        return choose_batch_size(
            cfg.batch_size, model, encoders.preprocess.to(device),
            f"{info.model_256}@{info.input_px_256}", device, precision, info.input_px_256,
            jobs[plan.todo[0]].geometry.patch_px, cfg.max_batch_mem_gb, per_rank,
        )  # fmt: skip
    finally:
        encoders.vit256.to("cpu")
        stain = encoders.preprocess.stain
        if isinstance(stain, StainNormalizer):  # count the slides' patches, not the timing
            stain.n_normalized = stain.n_passthrough = 0


def _balance(jobs: list[SlideTiles], todo: list[int], world: int) -> dict[str, Any]:
    """Regions per rank of this run's deal, and max/mean (1.0: no rank waits on another)."""
    shards = [shard(jobs, todo, rank, world) for rank in range(world)]
    return {"world_size": world, **shard_balance([j.n_regions for j in jobs], shards)}


def _peak_gpu_memory_gb() -> float | None:
    """Peak GPU memory this process allocated (None on CPU runs)."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


def _report(summary: dict[str, Any], out: Path) -> int:
    totals = summary["totals"]
    log.info(
        "extract: %d ok, %d skipped, %d failed, %d regions in %.1fs (%s regions/s) -> %s",
        totals["ok"], totals["skipped"], totals["failed"], totals["regions_encoded"],
        totals["seconds"], totals["regions_per_s"], out,
    )  # fmt: skip
    if totals["failed"]:
        for rec in summary["failed"]:
            log.error("failed: %s: %s", rec["slide_id"], rec["error"])
        log.error("%d slide(s) failed; see %s", totals["failed"], out / "summary.json")
        return 1
    return 0
