"""Heatmaps of many slides: one subfolder per slide and an index page of all, by score."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

from hipt.cohort import check_ids, read_csv
from hipt.errors import ConfigError, HiptError, one_line
from hipt.features import find_store, open_store
from hipt.heatmap.config import HeatmapConfig, heatmap_hash
from hipt.heatmap.html import HEAD_ICON, STYLE
from hipt.io import atomic_write_text
from hipt.stage import StageRun

log = logging.getLogger(__name__)

STAGE = "heatmap"
#: ``(per-slide config, model cache) -> summary``: the one-slide stage (``render_slide``).
Render = Callable[[HeatmapConfig, dict[tuple[str, ...], Any]], dict[str, Any]]


@dataclasses.dataclass
class Item:
    """One slide of the cohort and what happened to it."""

    slide_id: str
    store: Path
    status: str = "todo"  # ok | up_to_date | failed
    error: str | None = None
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)


def cohort_items(cfg: HeatmapConfig) -> list[Item]:
    """The slides of ``cfg.slides``: a cohort CSV's ``slide_id`` rows, or a folder's stores.

    Raises:
        ConfigError: neither a CSV nor a folder of stores; a CSV without ``FEATURES``.
    """
    src = Path(str(cfg.slides))
    if src.is_dir():
        stores = sorted(p for p in src.glob("*.zarr") if p.is_dir())
        if not stores:
            raise ConfigError(f"SLIDES={src} holds no <slide_id>.zarr stores")
        return [Item(p.stem, p) for p in stores]
    if src.suffix.lower() != ".csv" or not src.is_file():
        raise ConfigError(f"SLIDES={src} is neither a cohort CSV nor a folder of stores")
    if cfg.features is None:
        raise ConfigError("SLIDES=<cohort CSV> needs FEATURES=<folder of its stores>")
    df = read_csv(src)
    problems = check_ids(df)
    if problems and "slide_id" not in df.columns:
        raise ConfigError(f"{src}: {problems[0]}")
    ids = list(dict.fromkeys(df["slide_id"].dropna()))
    return [Item(sid, find_store(cfg.features, sid)) for sid in ids]


def run_cohort(cfg: HeatmapConfig, render: Render) -> int:
    """Draw every slide of ``cfg.slides`` into ``OUT/<slide_id>/``; 1 when any slide failed.

    A slide already drawn with the same inputs and settings is skipped; a slide that fails
    (no store, a damaged one, its file missing or changed) is reported and the others go on.
    """
    items = cohort_items(cfg)
    out = Path(cfg.out)
    with StageRun(STAGE, cfg, out, inputs=[str(cfg.slides)], chash=heatmap_hash(cfg)) as stage:
        cache: dict[tuple[str, ...], Any] = {}
        for item in items:
            try:
                meta = open_store(item.store).meta
                one = dataclasses.replace(
                    cfg,
                    slides=None,
                    slide=meta.source_path,
                    features=str(item.store),
                    out=str(out / item.slide_id),
                )
                item.summary = render(one, cache)
                item.status = "up_to_date" if item.summary.get("up_to_date") else "ok"
            except HiptError as err:
                item.status, item.error = "failed", one_line(err, item.store)
                log.error("slide %s failed: %s", item.slide_id, item.error)
        index = write_cohort_index(out, items)
        summary: dict[str, Any] = {
            "stage": STAGE,
            "index": index.name,
            "totals": {
                s: sum(i.status == s for i in items) for s in ("ok", "up_to_date", "failed")
            },
            "slides": [
                {
                    "slide_id": i.slide_id,
                    "status": i.status,
                    "error": i.error,
                    "prediction": i.summary.get("prediction"),
                }
                for i in items
            ],
        }
        stage.write_summary(summary)
        stage.done({"totals": summary["totals"]})
    failed = summary["totals"]["failed"]
    log.info("heatmaps of %d slide(s), %d failed: open %s", len(items), failed, index)
    return 1 if failed else 0


def _score(item: Item) -> float:
    pred = item.summary.get("prediction")
    return float(pred["score"]) if pred else float("-inf")


def write_cohort_index(out: Path, items: list[Item]) -> Path:
    """Write ``OUT/index.html``: every slide with its thumbnail and prediction.

    Highest score first; failed slides last, with their reason.
    """
    done = sorted((i for i in items if i.status != "failed"), key=_score, reverse=True)
    rows = []
    for i in done:
        pred = i.summary.get("prediction")
        what = escape(f"{pred['label']} (score {pred['score']:.3f})") if pred else "no model"
        page = f"{escape(i.slide_id)}/index.html"
        thumb = f"{escape(i.slide_id)}/thumbnail.png"
        rows.append(
            f'<tr><td><a href="{page}"><img src="{thumb}" alt="{escape(i.slide_id)}" '
            f'height="120"></a></td><td><a href="{page}">{escape(i.slide_id)}</a></td>'
            f"<td>{what}</td></tr>"
        )
    for i in (i for i in items if i.status == "failed"):
        rows.append(
            f"<tr><td></td><td>{escape(i.slide_id)}</td>"
            f"<td>failed: {escape(i.error or '')}</td></tr>"
        )
    html = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>{HEAD_ICON}"
        f"<title>HIPT attention: "
        f"{len(items)} slides</title><style>{STYLE}</style></head><body>"
        f"<h1>HIPT attention: {len(items)} slides</h1>"
        f"<p>Sorted by the slide model's score (highest first). Open a slide for its maps.</p>"
        f"<table class='info'><tr><th>thumbnail</th><th>slide</th><th>prediction</th></tr>"
        f"{''.join(rows)}</table>"
        f'<p><a href="summary.json">summary.json</a></p></body></html>'
    )
    path = out / "index.html"
    atomic_write_text(path, html)
    return path
