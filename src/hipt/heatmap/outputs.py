"""The heatmap stage's files: overlay PNGs, index.html, summary.json, run.json and W&B images."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hipt.heatmap.canvas import CanvasGeometry, CanvasStack
from hipt.heatmap.config import HeatmapConfig
from hipt.heatmap.html import Figure, Page, write_index
from hipt.heatmap.passes import MapSpec
from hipt.heatmap.render import render_overlay, save_png
from hipt.io import remove_path

if TYPE_CHECKING:
    from hipt.heatmap.runner import Inputs

log = logging.getLogger(__name__)

STAGE = "heatmap"
#: Root-level PNGs this stage owns (removed before a rerun so no stale head map survives).
OWNED_PNG = re.compile(r"^(thumbnail|slide_attention|vit4k_\w+|vit256_\w+|factorized_\w+)\.png$")


def map_names(spec: MapSpec, with_slide: bool) -> list[str]:
    """Names of the maps a run draws, in :func:`hipt.heatmap.scores.region_maps` order."""
    names = ["slide_attention"] if with_slide else []
    names += ["vit4k_mean", *(f"vit4k_head{j}" for j in spec.heads4k)]
    names += ["vit256_mean", *(f"vit256_head{i}" for i in spec.heads256)]
    names += ["factorized_mean", *(f"factorized_4kh{j}_256h{i}" for j, i in spec.head_pairs)]
    return names


def title(name: str, cfg: HeatmapConfig) -> str:
    """Human title of a map."""
    if name == "slide_attention":
        return "Slide-head attention per region"
    level, _, head = name.partition("_")
    head_txt = "mean over heads" if head == "mean" else head.replace("head", "head ")
    if level == "vit4k":
        return f"ViT-4K attention, {head_txt}"
    if level == "vit256":
        return f"ViT-256 attention, {head_txt}"
    how = "weighted mean" if cfg.combine == "mean" else "product"
    if head == "mean":
        return f"Factorized map ({how}), mean over heads"
    j, i = re.fullmatch(r"4kh(\d+)_256h(\d+)", head).groups()  # type: ignore[union-attr]
    return f"Factorized map ({how}), 4K head {j} x 256 head {i}"


def remove_owned(out: Path) -> None:
    """Delete this stage's earlier pictures in ``out`` (and nothing else)."""
    for path in out.glob("*.png"):
        if OWNED_PNG.match(path.name):
            path.unlink()
    remove_path(out / "topk")
    remove_path(out / "arrays")
    remove_path(out / "attention.geojson")


def _legend_lines(cfg: HeatmapConfig, inp: Inputs, name: str, geom: CanvasGeometry) -> list[str]:
    scope = {
        "slide": "percentile among the slide's regions",
        "vit4k": "percentile among the region's patches",
        "vit256": "percentile among the patch's tokens",
        "factorized": "combined percentiles of the levels",
    }[name.split("_")[0]]
    lines = [scope, f"slide: {inp.store.slide_id}", f"canvas: {geom.canvas_mpp:.2f} µm/px"]
    if inp.slide is not None:
        lines.append(f"slide model: {inp.slide.architecture}")
    lines.append(f"smoothing: {'shifted passes' if cfg.smoothing else 'off'}")
    lines.append("uncoloured: background / no region")
    return lines


def finish_outputs(
    cfg: HeatmapConfig,
    inp: Inputs,
    out: Path,
    canvases: CanvasStack,
    thumb: np.ndarray,
    facts: dict[str, Any],
    logger: Any,
) -> dict[str, Any]:
    """Render every canvas, write index.html, log images; return the summary (unwritten)."""
    geom: CanvasGeometry = facts["geometry"]
    save_png(np.ascontiguousarray(thumb), out / "thumbnail.png")
    files: dict[str, str] = {}
    for name in canvases.names:
        image = render_overlay(
            thumb, canvases.arrays[name], cfg.render, title(name, cfg),
            _legend_lines(cfg, inp, name, geom), geom.canvas_mpp,
        )  # fmt: skip
        files[name] = save_png(image, out / f"{name}.png").name
        logger.log_image(key=f"heatmap/{name}", images=[str(out / files[name])])
    tops = facts["topk"]
    for key in ("regions", "patches"):
        if tops[key]:
            logger.log_image(key=f"topk/{key}", images=[str(out / r["file"]) for r in tops[key]])
    is_main = lambda n: n.startswith("factorized") or n == "slide_attention"  # noqa: E731
    model = "none" if inp.slide is None else f"{inp.slide.architecture} ({inp.slide.path})"
    page = Page(
        title=f"HIPT attention: {inp.store.slide_id}",
        info=[
            ("slide", str(cfg.slide)),
            ("features", str(cfg.features)),
            ("slide model", model),
            ("regions", str(inp.store.n_regions)),
            ("canvas", f"{geom.width} x {geom.height} px at {geom.canvas_mpp:.3f} µm/px"),
            ("ViT-4K drawn", inp.vit4k_from),
            *_prediction_line(facts.get("prediction")),
            (
                "factorized",
                f"{cfg.combine} (weights slide {cfg.weights.slide}, "
                f"4K {cfg.weights.vit4k}, 256 {cfg.weights.vit256})",
            ),  # fmt: skip
        ],
        main=[Figure(files[n], title(n, cfg)) for n in files if is_main(n)],
        overlays=[Figure(files[n], title(n, cfg)) for n in files if not is_main(n)]
        + [Figure("thumbnail.png", "slide thumbnail")],
        regions=[Figure(r["file"], _caption(r)) for r in tops["regions"]],
        patches=[Figure(r["file"], _caption(r)) for r in tops["patches"]],
        links=[
            *(
                [("attention.geojson", "attention.geojson (QuPath: File > Import objects)")]
                if facts.get("geojson")
                else []
            ),
            ("summary.json", "summary.json"),
            ("run.json", "run.json"),
            ("resolved_config.yaml", "resolved_config.yaml"),
        ],  # fmt: skip
    )
    write_index(page, out)
    return {
        "stage": STAGE,
        "slide_id": inp.store.slide_id,
        "slide": str(cfg.slide),
        "features": str(cfg.features),
        "model": None
        if inp.slide is None
        else {
            "path": str(inp.slide.path),
            "name": inp.slide.architecture,
            "input": inp.model_input,
        },  # fmt: skip
        "vit4k_from": inp.vit4k_from,
        "random_weights": inp.store.meta.random_weights,
        "canvas": {**dataclasses.asdict(geom), "width": geom.width, "height": geom.height},
        "region_size_level0": facts["side_l0"],
        "read_level": facts["read_level"],
        "tokens_per_patch": facts["tokens_per_patch"],
        "n_regions": inp.store.n_regions,
        "heads": facts["heads"],
        "maps": files,
        "topk": tops,
        "slide_attention": facts["slide_attention"],
        "prediction": facts["prediction"],
        "geojson": facts["geojson"],
        "feature_check": facts["feature_check"],
        "seconds": facts["seconds"],
        "index": "index.html",
    }


def _prediction_line(prediction: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The page's line for the slide model's prediction, if there is a model."""
    if prediction is None:
        return []
    return [("prediction", f"{prediction['label']} (score {prediction['score']:.3f})")]


def _caption(rec: dict[str, Any]) -> str:
    where = f"x={rec['x']}, y={rec['y']}, {rec['size_level0']:.0f} px (level 0)"
    what = f"region {rec['region']}" + (f", patch {rec['patch']}" if "patch" in rec else "")
    return f"#{rec['rank']}: {what}; {where}; score {rec['score']:.3g}"


def summary_extra(inp: Inputs) -> dict[str, Any]:
    """What ``run.json`` records beyond the config: the sha256 of every weights file used."""
    return {"sha256": inp.shas}
