"""The heatmap stage: store + slide (+ slide model) -> factorized attention drawn over the slide."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hipt.errors import HiptError, StaleOutputError
from hipt.features import FeatureStore, open_store
from hipt.heatmap.canvas import CanvasGeometry, CanvasStack, choose_canvas_mpp
from hipt.heatmap.config import HeatmapConfig, heatmap_hash, validate
from hipt.heatmap.geojson import AttentionObjects, patch_means
from hipt.heatmap.inference import Vit256Pass, slide_forward, vit4k_cls_attention
from hipt.heatmap.models import (
    SlideModel,
    build_encoder,
    check_provenance,
    check_weights,
    load_slide_model,
    patch_preprocess,
)
from hipt.heatmap.outputs import finish_outputs, map_names, remove_owned, summary_extra
from hipt.heatmap.passes import MapSpec, RegionScorer
from hipt.heatmap.scores import percentile
from hipt.heatmap.topk import patch_crop, record, region_crop, top_patches, top_regions
from hipt.io import remove_path, tmp_path_for
from hipt.models.runtime import describe_device, resolve_device, set_fp32_matmul
from hipt.provenance import sha256_file
from hipt.slides import SlideReader
from hipt.slides.dicom import slide_stat
from hipt.slides.geometry import open_slide_at
from hipt.slides.pixels import read_region_hwc
from hipt.slides.regions import GRID
from hipt.stage import StageRun, outputs_current
from hipt.stain import normalizer_for_record
from hipt.tasks.base import task_from_state

if TYPE_CHECKING:
    from timm.layers import Attention

log = logging.getLogger(__name__)

STAGE = "heatmap"
CHUNK_REGIONS = 16  # regions per ViT-4K forward in the pre-pass
FEATURE_COSINE_WARN = 0.98


@dataclasses.dataclass
class Inputs:
    """Everything opened for one run."""

    store: FeatureStore
    reader: SlideReader
    device: torch.device
    vit256: Vit256Pass
    vit4k: torch.nn.Module
    vit4k_from: str
    slide: SlideModel | None
    model_input: str | None
    shas: dict[str, str | None]


def fingerprint(cfg: HeatmapConfig) -> dict[str, Any]:
    """What identifies a run's result: settings and the identity of every input file."""
    store = open_store(str(cfg.features))
    stat = _slide_stat(Path(str(cfg.slide)))
    ident: dict[str, Any] = {
        "config_hash": heatmap_hash(cfg),
        "slide": {"size": stat[0], "mtime_ns": stat[1]} if stat else None,
        "features": {"created_at": store.meta.created_at, "config_hash": store.meta.config_hash},
    }
    if cfg.model:
        model = Path(cfg.model)
        ident["model"] = sha256_file(model) if model.is_file() else str(model)
    blob = json.dumps(ident, sort_keys=True, default=str)
    return {**ident, "fingerprint": hashlib.sha256(blob.encode()).hexdigest()}


def _slide_stat(slide: Path) -> tuple[int, int] | None:
    """``(bytes, mtime)`` of a slide file or DICOM series; None when it cannot be read."""
    try:
        return slide_stat(slide)
    except OSError:
        return None


#: Models built once per process run (a cohort's slides share their encoders and slide model).
ModelCache = dict[tuple[str, ...], Any]


def _cached(cache: ModelCache, key: tuple[str, ...], make: Any) -> Any:
    if key not in cache:
        cache[key] = make()
    return cache[key]


def open_inputs(cfg: HeatmapConfig, cache: ModelCache | None = None) -> Inputs:
    """Open store, slide and models; refuse mismatched weights or a slide of another store.

    The slide is opened with the geometry the store records (tiling's MPP and its source,
    read level and size), so a slide tiled with ``mpp_override`` needs nothing more here.
    Models come from ``cache`` when an earlier slide of the run built them.
    """
    cache = {} if cache is None else cache
    store = open_store(str(cfg.features))
    meta = store.meta
    if store.n_regions == 0:
        raise HiptError(f"{cfg.features}: the store holds no regions (no tissue); nothing to draw")
    stat = _slide_stat(Path(str(cfg.slide)))
    size = stat[0] if stat else -1
    if size >= 0 and meta.source_size_bytes not in (size, -1):
        raise StaleOutputError(
            f"{cfg.slide} ({size} bytes) is not the slide {meta.slide_id} the store was made from "
            f"({meta.source_path}, {meta.source_size_bytes} bytes)"
        )
    sha256 = check_weights("256", cfg.checkpoint256, meta.checkpoint_256_sha256)
    device = resolve_device(cfg.device)
    if ("device", str(device)) not in cache:  # once per run: the line says what runs where
        precision = "bf16 autocast" if device.type == "cuda" else "32-true"
        log.info("heatmap: %s", describe_device(device, precision, set_fp32_matmul(device)))
        cache[("device", str(device))] = device
    slide = None
    if cfg.model:
        model = cfg.model
        slide = _cached(
            cache, ("slide", model), lambda: load_slide_model(model, device, cfg.task, cfg.classes)
        )
    if slide is not None:
        check_provenance(slide, meta, Path(str(cfg.features)))
    model_input = slide.input_kind(cfg.model_input) if slide else None
    own_4k = slide.region_encoder() if slide else None
    vit4k_from = cfg.vit4k_source
    if vit4k_from == "auto":
        vit4k_from = "model" if own_4k is not None else "checkpoint"
    if vit4k_from == "model" and own_4k is None:
        raise HiptError("vit4k_source=model needs a slide model with its own ViT-4K (hipt_lgp)")
    need_4k = vit4k_from == "checkpoint" or cfg.checkpoint4k is not None
    sha4k = check_weights("4K", cfg.checkpoint4k, meta.checkpoint_4k_sha256) if need_4k else None
    if meta.random_weights:
        log.warning(
            "the store was made with random encoder weights: the maps show an "
            "untrained model (seed %d)",
            cfg.seed,
        )
    # Random encoders: seeded, in extraction's order (256, then 4K), once per run.
    key = (meta.model_256, str(cfg.checkpoint256), meta.model_4k, str(cfg.checkpoint4k))

    def encoders() -> tuple[nn.Module, nn.Module]:
        torch.manual_seed(cfg.seed)
        v256 = build_encoder(meta.model_256, cfg.checkpoint256, device)
        v4k = build_encoder(meta.model_4k, cfg.checkpoint4k, device, meta.feature_dim_256)
        return v256, v4k

    vit256, store_4k = _cached(cache, ("encoders", *key), encoders)
    stain_key = ("stain", meta.stain, str(cfg.stain_reference))
    stain = _cached(
        cache, stain_key, lambda: normalizer_for_record(meta.stain, cfg.stain_reference, device)
    )
    preprocess = patch_preprocess(meta, stain)
    vit4k = own_4k.eval() if own_4k is not None and vit4k_from == "model" else store_4k
    reader = open_slide_at(meta.geometry(), path=cfg.slide)  # last: nothing can fail after it
    shas = {
        "checkpoint256": sha256,
        "checkpoint4k": sha4k,
        "model": slide.sha256 if slide else None,
    }
    return Inputs(
        store,
        reader,
        device,
        Vit256Pass(vit256, device, cfg.batch_size, preprocess),
        vit4k,
        vit4k_from,
        slide,
        model_input,
        shas,
    )


def _prediction(state: dict[str, Any], logits: torch.Tensor) -> dict[str, Any]:
    """The slide model's prediction for one slide: the task's outputs and their headline."""
    task = task_from_state(state)
    outputs = task.outputs(logits)
    label, score = task.headline(outputs)
    values = {k: v[0].item() for k, v in outputs.items()}
    return {"task": task.name, "label": label, "score": score, "outputs": values}


def prepass(inp: Inputs) -> tuple[np.ndarray | None, np.ndarray, dict[str, Any] | None]:
    """What the store alone gives: slide attention, ViT-4K attention, the prediction.

    Returns:
        Slide attention ``[M]`` (None without a slide model), ViT-4K attention
        ``[M, H, 16, 16]``, and the slide model's prediction for the slide (or None).
    """
    store = inp.store
    att, prediction = None, None
    if inp.slide is not None:
        bag = store.feats256() if inp.model_input == "feats256" else store.feats4k()
        att, logits = slide_forward(inp.slide.model, bag, inp.device)
        if "task" in inp.slide.card.output:  # a model exported without its task only draws
            prediction = _prediction(inp.slide.card.output, logits)
    chunks = [
        vit4k_cls_attention(inp.vit4k, store.feats256(slice(i, i + CHUNK_REGIONS)), inp.device)
        for i in range(0, store.n_regions, CHUNK_REGIONS)
    ]
    return att, np.concatenate(chunks), prediction


def canvas_thumbnail(reader: SlideReader, geom: CanvasGeometry) -> np.ndarray:
    """The slide at canvas size, from the reader's block-wise thumbnail (never level 0 whole)."""
    thumb, _ = reader.thumbnail(max(geom.width, geom.height))
    if thumb.shape[:2] != (geom.height, geom.width):
        resized = Image.fromarray(thumb).resize((geom.width, geom.height), Image.Resampling.BOX)
        thumb = np.asarray(resized)
    return np.ascontiguousarray(thumb)


def _spec(cfg: HeatmapConfig, h256: int, h4k: int) -> MapSpec:
    def heads(chosen: list[int] | None, n: int, level: str) -> list[int]:
        picked = list(range(n)) if chosen is None else [int(h) for h in chosen]
        bad = [h for h in picked if not 0 <= h < n]
        if bad:
            raise HiptError(f"{level} heads {bad} do not exist (the model has {n})")
        return picked

    pairs = [(int(j), int(i)) for j, i in cfg.head_pairs]
    heads([j for j, _ in pairs], h4k, "ViT-4K")
    heads([i for _, i in pairs], h256, "ViT-256")
    w = cfg.weights
    return MapSpec(
        heads256=heads(cfg.heads256, h256, "ViT-256"),
        heads4k=heads(cfg.heads4k, h4k, "ViT-4K"),
        head_pairs=pairs,
        weights=(w.slide, w.vit4k, w.vit256),
        combine=cfg.combine,
        scope=cfg.percentile_scope,
        smoothing=cfg.smoothing,
    )


def draw(cfg: HeatmapConfig, inp: Inputs, out: Path, logger: Any) -> dict[str, Any]:
    """Compute every map region by region onto the canvases, crop the top-k, render outputs."""
    t0 = time.perf_counter()
    store, meta, reader = inp.store, inp.store.meta, inp.reader
    slide_geom = meta.geometry()
    att, attn4k, prediction = prepass(inp)
    objects = AttentionObjects(slide_geom) if cfg.geojson else None
    coords, mask = store.coords(), store.patch_mask()
    slide_pct = percentile(att) if att is not None else None
    w0, h0 = slide_geom.width, slide_geom.height
    canvas_mpp = choose_canvas_mpp(w0, h0, slide_geom.mpp, cfg.canvas_mpp, cfg.min_canvas_side)
    geom = CanvasGeometry(w0, h0, slide_geom.mpp, canvas_mpp)
    side_l0 = slide_geom.region_side_l0
    n_heads256 = int(cast("Attention", inp.vit256.last.attn).num_heads)
    spec = _spec(cfg, n_heads256, int(attn4k.shape[1]))
    scorer = RegionScorer(inp.vit256, inp.vit4k, inp.device, meta.patch_px, spec)
    names = map_names(spec, att is not None)
    picks_r = top_regions(att, cfg.topk.regions)
    picks_p = top_patches(attn4k.mean(axis=1).reshape(len(coords), -1), mask, att, cfg.topk.patches)
    topk_dir = out / "topk"
    topk_dir.mkdir(parents=True, exist_ok=True)
    crop_side = min(cfg.topk.region_crop_px or meta.region_px, meta.region_px)
    tops: dict[str, list[dict[str, Any]]] = {"regions": [], "patches": []}
    cosines: list[np.ndarray] = []
    work = tmp_path_for(out / "canvas")
    canvases = CanvasStack(geom, names, work)
    try:
        thumb = canvas_thumbnail(reader, geom)
        bar = tqdm(
            range(len(coords)),
            desc=f"heatmap {meta.slide_id}",
            unit="region",
            disable=not cfg.progress,
        )
        with logging_redirect_tqdm():
            for m in bar:
                x, y = (int(v) for v in coords[m])
                pixels = read_region_hwc(reader, slide_geom, x, y)
                res = scorer.score(
                    pixels,
                    store.feats256(m),
                    attn4k[m],
                    mask[m],
                    None if slide_pct is None else float(slide_pct[m]),
                )
                canvases.paint(x, y, side_l0, res.maps.maps)
                cosines.append(res.cosine)
                if objects is not None:
                    region = {}
                    if att is not None and slide_pct is not None:
                        region = {
                            "slide_attention": float(slide_pct[m]),
                            "slide_attention_weight": float(att[m]),
                        }
                    objects.add_region(m, (x, y), mask[m], patch_means(res.maps.maps, GRID), region)
                for pick in (p for p in picks_r if p.region == m):
                    f = region_crop(topk_dir, pick, pixels, res.maps, crop_side, cfg.render)
                    tops["regions"].append(record(pick, f, out, (x, y), side_l0))
                for pick in (p for p in picks_p if p.region == m):
                    f = patch_crop(topk_dir, pick, pixels, res.maps, meta.patch_px, cfg.render)
                    xy = slide_geom.patch_origins(x, y)[pick.patch]
                    tops["patches"].append(record(pick, f, out, tuple(xy), side_l0 / GRID))
        canvases.flush()
        for key in tops:
            tops[key].sort(key=lambda r: r["rank"])
        cos = np.concatenate(cosines) if cosines else np.zeros(0)
        facts = {
            "geometry": geom,
            "side_l0": side_l0,
            "read_level": slide_geom.read_level,
            "tokens_per_patch": scorer.t,
            "heads": {"vit256": spec.heads256, "vit4k": spec.heads4k},
            "slide_attention": None if att is None else att.tolist(),
            "prediction": prediction,
            "geojson": objects.write(out).name if objects is not None else None,
            "topk": tops,
            "feature_check": _feature_check(cos) if cfg.check_features else None,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        summary = finish_outputs(cfg, inp, out, canvases, thumb, facts, logger)
        canvases.close()
        if cfg.save_arrays:
            remove_path(out / "arrays")
            os.replace(work, out / "arrays")
            summary["arrays"] = "arrays"
        return summary
    finally:
        canvases.close()
        remove_path(work)


def _feature_check(cos: np.ndarray) -> dict[str, Any]:
    if cos.size == 0:
        return {"n_patches": 0}
    mean = float(cos.mean())
    if mean < FEATURE_COSINE_WARN:
        log.warning(
            "ViT-256 features recomputed from the slide differ from the store's (mean cosine "
            "%.3f): the 256-level maps may not show what the store's encoder saw (other slide, "
            "other weights, or random weights with another seed)",
            mean,
        )
    return {"n_patches": int(cos.size), "mean_cosine": mean, "min_cosine": float(cos.min())}


def render_slide(cfg: HeatmapConfig, cache: ModelCache | None = None) -> dict[str, Any]:
    """Draw one slide (``cfg.slide`` with its store ``cfg.features``) into ``cfg.out``.

    Returns:
        Its summary (also ``summary.json``); ``{"up_to_date": True, ...}`` when nothing was
        redone.
    """
    out = Path(cfg.out)
    inputs = [str(cfg.slide), str(cfg.features), *([cfg.model] if cfg.model else [])]
    chash = heatmap_hash(cfg)
    with StageRun(STAGE, cfg, out, inputs=inputs, chash=chash, defer_start=True) as stage:
        ident = fingerprint(cfg)
        if outputs_current(out, ident["fingerprint"], overwrite=cfg.overwrite, what="heatmaps",
                           marker="index.html"):  # fmt: skip
            log.info("heatmaps in %s are up to date; open %s", out, out / "index.html")
            summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
            return {**summary, "up_to_date": True}
        stage.start()
        remove_path(out / "summary.json")
        remove_owned(out)
        inp = open_inputs(cfg, cache)
        try:
            summary = draw(cfg, inp, out, stage.logger)
        finally:
            inp.reader.close()
        summary["identity"] = ident
        stage.done(summary_extra(inp))
        stage.write_summary(summary)  # last: its presence marks a finished run
    log.info("done: open %s", out / "index.html")
    return summary


def run(cfg: HeatmapConfig) -> int:
    """Run the stage; return the exit code (0 also when the outputs are already up to date)."""
    validate(cfg)
    if cfg.slides is not None:
        from hipt.heatmap.cohort import run_cohort

        return run_cohort(cfg, render_slide)
    render_slide(cfg)
    return 0
