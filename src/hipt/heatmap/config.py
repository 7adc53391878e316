"""Typed config of the heatmap stage (``conf/heatmap.yaml``) and its validation."""

from __future__ import annotations

import dataclasses

from hipt.config import WandbConfig, config_hash, non_result
from hipt.errors import ConfigError

SCOPES = ("tissue", "all")
COMBINES = ("mean", "product")
MODEL_INPUTS = ("auto", "feats256", "feats4k")
VIT4K_SOURCES = ("auto", "model", "checkpoint")


@dataclasses.dataclass
class FactorWeights:
    """Weights of each level's percentile map in the factorized map.

    The official HIPT map is the weighted mean ``(s4k * w4k + s256 * w256) / (w4k + w256)``
    with the 256-level weight doubled (reference/hipt.md 4.2); the slide level joins with
    ``slide`` when a finetuned model is given.

    Attributes:
        slide: weight of the slide-head (region) percentile.
        vit4k: weight of the ViT-4K (patch within region) percentile.
        vit256: weight of the ViT-256 (token within patch) percentile.
    """

    slide: float = 1.0
    vit4k: float = 1.0
    vit256: float = 2.0


@dataclasses.dataclass
class RenderConfig:
    """How maps are drawn.

    Attributes:
        cmap: matplotlib colormap name.
        lighten: map colours ``c -> c / 2 + 0.5`` before blending (official jet look).
        alpha: weight of the colour in the blend with the thumbnail.
        threshold: draw only scores at or above this percentile (``null``: draw all).
        panel_px: width of the legend panel (colour bar, title, scale bar) right of the map.
        min_height_px: the PNG is at least this tall so the legend fits on small slides.
    """

    cmap: str = "jet"
    lighten: bool = True
    alpha: float = 0.5
    threshold: float | None = None
    panel_px: int = 260
    min_height_px: int = 420


@dataclasses.dataclass
class TopkConfig:
    """Crops of the most attended regions and patches.

    Attributes:
        regions: number of top regions (ranked by slide attention; needs ``model``).
        patches: number of top patches (slide x ViT-4K attention, or ViT-4K alone).
        region_crop_px: side of each panel of a region crop (``0``: full ``region_px``).
    """

    regions: int = 4
    patches: int = 8
    region_crop_px: int = 1024


@dataclasses.dataclass
class HeatmapConfig:
    """Settings of ``make heatmap``; see ``conf/heatmap.yaml`` for the documented defaults.

    Attributes:
        slide: one slide file the store was extracted from (read the way tiling recorded, MPP
            included, from the store: no geometry settings here).
        features: the slide's feature store (``<slide_id>.zarr``); with ``slides``, the folder
            of the cohort's stores.
        slides: many slides at once: a cohort CSV (``slide_id`` column; stores in
            ``features``) or a folder of stores; each slide's file is the one its store
            records. One subfolder per slide, and an ``index.html`` of all, by score.
        out: output folder.
        model: finetuned slide model: an exported ``.safetensors`` with its ``.json`` card, a
            finetune ``fold_<k>`` folder, or an official HIPT ``s_<k>_checkpoint.pt`` (give
            ``task``); ``null`` draws only the ViT levels.
        task: official HIPT files only: what the model predicts.
        classes: official HIPT files only: class names in logit order.
        geojson: write ``attention.geojson`` (regions and tissue patches with their attention
            as QuPath measurements, and the tissue outline) for QuPath's File > Import objects.
        checkpoint256: ViT-256 weights; must be the file the store was made with.
        checkpoint4k: ViT-4K weights; must be the file the store was made with.
        stain_reference: stores made with stain normalization: the reference image given to
            extraction (``None``: the shipped reference); the store's record is checked.
        canvas_mpp: µm per canvas pixel of the drawings (8 ~ a 4,700 px canvas for a
            150k px slide at 0.25 µm/px).
        min_canvas_side: use a finer canvas when the longest side would be shorter than this.
        smoothing: average shifted re-inference passes (official: 2 shifts at the 256 level,
            4 at the 4K level); costs 4 ViT-256 passes per region instead of 1.
        percentile_scope: rank scores among ``tissue`` patches only, or among ``all`` (official).
        heads256: ViT-256 heads drawn one by one (``null``: all).
        heads4k: ViT-4K heads drawn one by one (``null``: all).
        head_pairs: ``[[j, i], ...]`` factorized maps of ViT-4K head j with ViT-256 head i.
        combine: ``mean`` (official weighted mean of percentiles) or ``product``.
        weights: level weights of the factorized map.
        model_input: store array fed to the slide model (``auto`` from its architecture).
        vit4k_source: ViT-4K for the 4K maps: the slide ``model``'s own region encoder, the
            store's ``checkpoint``, or ``auto`` (the model's when it has one).
        check_features: compare ViT-256 features recomputed from pixels with the store's.
        save_arrays: keep the canvases as ``arrays/<map>.npy`` (float16 percentiles, NaN where
            nothing is drawn) for analysis; off by default (44 MB per map on a large slide).
        device: ``auto``, ``cpu`` or ``cuda[:n]``.
        batch_size: patches per ViT-256 forward.
        seed: seed of random encoder weights (stores made without checkpoints).
        progress: show a progress bar.
        overwrite: replace the outputs of a run with other settings in ``out``.
        render: drawing options.
        topk: crop options.
        wandb: Weights & Biases settings.
    """

    slide: str | None = None
    features: str | None = None
    slides: str | None = None
    out: str = non_result("???")
    model: str | None = None
    task: str | None = None
    classes: list[str] = dataclasses.field(default_factory=list)
    geojson: bool = True
    checkpoint256: str | None = None
    checkpoint4k: str | None = None
    stain_reference: str | None = None
    canvas_mpp: float = 8.0
    min_canvas_side: int = 1024
    smoothing: bool = False
    percentile_scope: str = "tissue"
    heads256: list[int] | None = None
    heads4k: list[int] | None = None
    head_pairs: list[list[int]] = dataclasses.field(default_factory=list)
    combine: str = "mean"
    weights: FactorWeights = dataclasses.field(default_factory=FactorWeights)
    model_input: str = "auto"
    vit4k_source: str = "auto"
    check_features: bool = True
    save_arrays: bool = False
    device: str = non_result("auto")
    batch_size: int = non_result(64)
    seed: int = 0
    progress: bool = non_result(True)
    overwrite: bool = non_result(False)
    render: RenderConfig = dataclasses.field(default_factory=RenderConfig)
    topk: TopkConfig = dataclasses.field(default_factory=TopkConfig)
    wandb: WandbConfig = non_result(default_factory=WandbConfig)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got '{value}'")


def validate(cfg: HeatmapConfig) -> None:
    """Raise :class:`ConfigError` naming the first invalid value."""
    if cfg.slides is None and (cfg.slide is None or cfg.features is None):
        raise ConfigError(
            "give SLIDE=<slide file> FEATURES=<its store>, or SLIDES=<cohort CSV "
            "with FEATURES=<store folder> | store folder>"
        )
    if cfg.slides is not None and cfg.slide is not None:
        raise ConfigError("give SLIDE= (one slide) or SLIDES= (many), not both")
    _choice("percentile_scope", cfg.percentile_scope, SCOPES)
    _choice("combine", cfg.combine, COMBINES)
    _choice("model_input", cfg.model_input, MODEL_INPUTS)
    _choice("vit4k_source", cfg.vit4k_source, VIT4K_SOURCES)
    if cfg.canvas_mpp <= 0:
        raise ConfigError(f"canvas_mpp must be > 0 µm/px, got {cfg.canvas_mpp}")
    if cfg.min_canvas_side < 0 or cfg.min_canvas_side > 20000:
        raise ConfigError(f"min_canvas_side must be in [0, 20000], got {cfg.min_canvas_side}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    w = cfg.weights
    if min(w.slide, w.vit4k, w.vit256) < 0 or w.vit4k + w.vit256 <= 0:
        raise ConfigError("weights must be >= 0 with weights.vit4k + weights.vit256 > 0")
    for pair in cfg.head_pairs:
        if len(pair) != 2:
            raise ConfigError(f"head_pairs entries must be [vit4k_head, vit256_head], got {pair}")
    r = cfg.render
    if not 0.0 <= r.alpha <= 1.0:
        raise ConfigError(f"render.alpha must be in [0, 1], got {r.alpha}")
    if r.threshold is not None and not 0.0 <= r.threshold <= 100.0:
        raise ConfigError(f"render.threshold must be a percentile in [0, 100], got {r.threshold}")
    if r.panel_px < 120:
        raise ConfigError(f"render.panel_px must be >= 120, got {r.panel_px}")
    t = cfg.topk
    if t.regions < 0 or t.patches < 0 or t.region_crop_px < 0:
        raise ConfigError("topk.regions, topk.patches and topk.region_crop_px must be >= 0")


def heatmap_hash(cfg: HeatmapConfig) -> str:
    """sha256 of the settings that change the outputs (the non-result fields left out)."""
    return config_hash(cfg)
