"""The tile stage: slides -> tissue mask -> 4096-px regions with 16x16 patch masks, resumable."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hipt.errors import ConfigError, SlideError, one_line
from hipt.io import atomic_output, remove_path
from hipt.provenance import sha256_file
from hipt.slides.annotations import Roi, load_roi
from hipt.slides.dicom import slide_stat
from hipt.slides.geometry import SlideGeometry
from hipt.slides.inputs import SlideEntry, discover_slides
from hipt.slides.qupath import AnnotationError
from hipt.slides.readers import SlideReader, open_slide
from hipt.slides.regions import REGION_SCHEMA, read_metadata, regions_table, with_metadata
from hipt.slides.roi import coverage, mask_geometry, restrict_mask
from hipt.slides.tiles import REGIONS_FILE
from hipt.slides.tiling import LevelChoice, RegionSelection, choose_level, select_regions
from hipt.slides.tissue import TissueMask, segment_tissue
from hipt.stage import StageRun
from hipt.tile.config import TileConfig, tiling_hash, validate
from hipt.tile.geojson import FOLDER as GEOJSON_FOLDER
from hipt.tile.geojson import write_tiling_objects
from hipt.tile.qc import EXCLUDE_RGBA, INCLUDE_RGBA, render_qc, write_qc

log = logging.getLogger(__name__)

STAGE = "tile"
VERIFY_STRIP_PX = 1024  # rows per verification read: bounds memory at ~25 MB for 8192-px reads


@dataclasses.dataclass
class SlideOutcome:
    """What happened to one slide in this run."""

    entry: SlideEntry
    status: str  # "ok" | "skipped" | "failed"
    n_regions: int = 0
    seconds: float = 0.0
    error: str | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    stale: bool = False
    roi: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """The ``summary.json`` entry."""
        rec: dict[str, Any] = {"slide_id": self.entry.slide_id, "path": str(self.entry.path)}
        if self.status == "failed":
            rec["error"] = self.error
        else:
            rec["n_regions"] = self.n_regions
        if self.status == "ok":
            rec["seconds"] = round(self.seconds, 3)
            rec["warnings"] = self.warnings
            if self.roi is not None:
                rec["roi"] = self.roi
        return rec


def slide_outputs(out: Path, slide_id: str) -> tuple[Path, Path, Path]:
    """``(per-slide parquet, qc png, QuPath geojson)`` paths of a slide."""
    return (
        out / "slides" / f"{slide_id}.parquet",
        out / "qc" / f"{slide_id}.png",
        out / GEOJSON_FOLDER / f"{slide_id}.geojson",
    )


def annotation_file(entry: SlideEntry, cfg: TileConfig) -> Path | None:
    """The slide's annotation file: its manifest cell, else ``<annotations>/<slide_id>.geojson``.

    ``None`` when neither names one (a manifest cell naming a missing file is returned, and
    fails the slide when read).
    """
    if entry.annotations is not None:
        return entry.annotations
    if cfg.annotations:
        path = Path(cfg.annotations).expanduser() / f"{entry.slide_id}.geojson"
        return path.resolve() if path.is_file() else None
    return None


def source_identity(entry: SlideEntry, notes: Path | None) -> dict[str, Any]:
    """What identifies a slide's input: path, size, mtime, any manifest MPP, its annotations."""
    size, mtime = slide_stat(entry.path)
    return {
        "path": str(entry.path),
        "size_bytes": size,
        "mtime_ns": mtime,
        "manifest_mpp": entry.mpp,
        "annotations": None
        if notes is None
        else {"path": str(notes), "sha256": sha256_file(notes) if notes.is_file() else None},
    }


def done_state(parquet: Path, chash: str, identity: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``("missing" | "done" | "stale", metadata)`` of a slide's earlier output."""
    if not parquet.is_file():
        return "missing", {}
    try:
        meta = read_metadata(parquet)
    except (OSError, ValueError, pa.ArrowException):
        return "stale", {}
    same = meta.get("config_hash") == chash and meta.get("source") == identity
    return ("done" if same else "stale"), meta


def _verify_reads(
    reader: SlideReader, origins: list[tuple[int, int]], level: int, read_size: int, workers: int
) -> None:
    """Decode the in-slide part of every kept region once at its read level, strip by strip.

    Tiling itself needs only the thumbnail, but a slide with an undecodable tile under tissue
    would otherwise pass here and crash feature extraction later (CLAM's pain point). This is
    one decode pass over the kept regions, the cost the extract stage pays anyway; the pixels
    are discarded, and the white padding outside the slide is not read at all.
    """
    lw, lh = reader.level_dimensions[level]
    ds = float(reader.level_downsamples[level])
    strip = min(read_size, VERIFY_STRIP_PX)
    by_size: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for x, y in origins:
        width = min(read_size, lw - math.floor(x / ds))
        for k in range(math.ceil(read_size / strip)):
            y0 = y + round(k * strip * ds)
            height = min(strip, read_size - k * strip, lh - math.floor(y0 / ds))
            if width > 0 and height > 0:
                by_size.setdefault((width, height), []).append((x, y0))
    for (width, height), locs in by_size.items():
        for _ in reader.read_regions(locs, level, width, height, num_workers=workers):
            pass


@dataclasses.dataclass
class _Tiling:
    """Everything computed for one slide before its outputs are written."""

    thumb: np.ndarray
    mask: TissueMask  # the tissue used: limited to the region of interest, if any
    tissue: Any  # the same as level-0 shapely geometry (exact, for QuPath)
    choice: LevelChoice
    sel: RegionSelection
    warnings: list[str]


def _tissue_in_roi(mask: TissueMask, roi: Roi | None) -> tuple[TissueMask, Any, Any, Any]:
    """``(mask shown, tissue geometry, keep geometry, pixel coverage)`` of a slide's ROI."""
    tissue = mask_geometry(mask)
    if roi is None or roi.keep is None:
        return mask, tissue, None, None
    cov = coverage(roi.keep, mask.mask.shape, mask.downsample, where=mask.mask)
    return restrict_mask(mask, cov), tissue.intersection(roi.keep), roi.keep, cov


def _tile_reader(reader: SlideReader, cfg: TileConfig, roi: Roi | None) -> _Tiling:
    """Segment, grid and select the regions of an open slide; verify them if asked."""
    warnings: list[str] = []
    width, height = reader.level_dimensions[0]
    thumb, thumb_ds = reader.thumbnail(cfg.thumbnail_px)
    found = segment_tissue(thumb, thumb_ds, reader.mpp, cfg.tissue)
    mask, tissue, keep, cov = _tissue_in_roi(found, roi)
    choice = choose_level(reader.level_downsamples, reader.mpp, cfg.target_mpp, cfg.mpp_tolerance)
    if choice.upsampled:
        warnings.append(
            f"level-0 mpp {reader.mpp:.4f} is coarser than target_mpp {cfg.target_mpp}; "
            f"regions are enlarged {1 / choice.scale:.3f}x from level 0"
        )
    sel = select_regions(found, width, height, reader.mpp, cfg.target_mpp, cfg.region_px,
                         cfg.patch_px, cfg.min_tissue, cfg.min_patch_tissue, keep, cov)  # fmt: skip
    if not sel.origins:
        where = "inside the annotated region of interest " if keep is not None else ""
        warnings.append(
            f"no region reaches min_tissue={cfg.min_tissue} (tissue {where}covers "
            f"{mask.fraction:.1%} of the thumbnail); check the QC picture"
        )
    if cfg.verify_read and sel.origins:
        read_size = choice.read_size(cfg.region_px)
        _verify_reads(reader, sel.origins, choice.level, read_size, cfg.num_workers)
    return _Tiling(thumb, mask, tissue, choice, sel, warnings)


def _roi_polygons(roi: Roi | None) -> list[tuple[Any, tuple[int, int, int, int]]]:
    if roi is None:
        return []
    drawn = [(roi.include, INCLUDE_RGBA), (roi.exclude, EXCLUDE_RGBA)]
    return [(g, rgba) for g, rgba in drawn if g is not None]


def _load_roi(
    entry: SlideEntry, notes: Path | None, cfg: TileConfig, size: tuple[int, int]
) -> Roi | None:
    """The slide's region of interest, or None when it has no annotation file (and may not)."""
    if notes is None:
        if cfg.roi.required:
            raise AnnotationError(
                f"{entry.path}: no annotation file (looked for {entry.slide_id}.geojson in "
                f"{cfg.annotations or 'no annotations folder'}); add it or set roi.required=false"
            )
        return None
    roi = load_roi(notes, cfg.roi, *size)
    log.info("%s: %s", entry.slide_id, roi.describe())
    return roi


def tile_slide(
    entry: SlideEntry, cfg: TileConfig, out: Path, chash: str, identity: dict[str, Any]
) -> SlideOutcome:
    """Tile one slide and write its QC png and QuPath objects, then its parquet.

    Raises:
        SlideError: the slide cannot be opened or read.
        AnnotationError: its annotation file is missing (when required), malformed, or off
            the slide.
    """
    t0 = time.perf_counter()
    notes = annotation_file(entry, cfg)
    given = entry.mpp if entry.mpp is not None else cfg.mpp_override
    with open_slide(entry.path, backend=cfg.backend, mpp_override=given) as reader:
        log.info("%s: read with %s (%s)", entry.slide_id, reader.backend, _kind(entry.path))
        roi = _load_roi(entry, notes, cfg, reader.level_dimensions[0])
        t = _tile_reader(reader, cfg, roi)
        geometry = SlideGeometry(
            slide_id=entry.slide_id,
            path=str(entry.path),
            backend=reader.backend,
            width=int(reader.level_dimensions[0][0]),
            height=int(reader.level_dimensions[0][1]),
            mpp=float(reader.mpp),
            mpp_source="manifest" if entry.mpp is not None else reader.mpp_source,
            read_level=t.choice.level,
            read_size=t.choice.read_size(cfg.region_px),
            read_downsample=float(reader.level_downsamples[t.choice.level]),
            target_mpp=float(cfg.target_mpp),
            region_px=cfg.region_px,
            patch_px=cfg.patch_px,
        )
    table = regions_table(geometry, t.sel, roi.sha256 if roi is not None else None)
    image = render_qc(t.thumb, t.mask, t.sel.origins, geometry.region_side_l0, t.sel.patch_masks,
                      polygons=_roi_polygons(roi))  # fmt: skip
    roi_info = None
    if roi is not None:
        roi_info = {"path": str(roi.path), "sha256": roi.sha256, **roi.counts}
    meta = {
        "stage": STAGE,
        "config_hash": chash,
        "source": identity,
        "slide_id": entry.slide_id,
        "geometry": geometry.to_dict(),
        "upsampled": t.choice.upsampled,
        "tissue_fraction": t.mask.fraction,
        "n_candidates": t.sel.n_candidates,
        "n_regions": len(t.sel.origins),
        "roi": roi_info,
        "warnings": t.warnings,
    }
    for warning in t.warnings:
        log.warning("%s: %s", entry.path, warning)
    parquet, png, objects = slide_outputs(out, entry.slide_id)
    write_qc(image, png)
    write_tiling_objects(objects, t.tissue, geometry, t.sel)
    # The parquet is the slide's "done" marker, so it is written last.
    with atomic_output(parquet) as tmp:
        pq.write_table(with_metadata(table, meta), tmp)
    seconds = time.perf_counter() - t0
    return SlideOutcome(entry, "ok", len(t.sel.origins), seconds, warnings=t.warnings, roi=roi_info)


def _kind(path: Path) -> str:
    """What a slide is, for the log: ``DICOM series`` or its file type."""
    return "DICOM series" if path.is_dir() or path.suffix.lower() == ".dcm" else path.suffix


def process_entry(entry: SlideEntry, cfg: TileConfig, out: Path, chash: str) -> SlideOutcome:
    """Skip, redo or tile one slide; a failure is returned, never raised."""
    outputs = slide_outputs(out, entry.slide_id)
    stale = False
    try:
        if entry.error is not None:
            raise SlideError(entry.error)
        identity = source_identity(entry, annotation_file(entry, cfg))
        state, meta = done_state(outputs[0], chash, identity)
        if state == "done" and not cfg.overwrite:
            log.info("%s: already done with these settings; skipped", entry.slide_id)
            return SlideOutcome(entry, "skipped", int(meta.get("n_regions", 0)))
        if state == "stale":
            stale = True
            log.info("%s: earlier output is stale (other settings or source); redoing",
                     entry.slide_id)  # fmt: skip
        outcome = tile_slide(entry, cfg, out, chash, identity)
    except (ConfigError, ImportError, NameError):
        # A bad setting (e.g. an unknown backend) or broken code is not this slide's fault and
        # would fail every slide alike: stop the run instead of reporting N identical failures.
        raise
    except Exception as exc:  # noqa: BLE001 - a bad slide must never stop the batch
        msg = one_line(exc, entry.path)
        log.error("slide %s failed: %s", entry.slide_id, msg)
        log.debug("traceback for %s", entry.slide_id, exc_info=True)
        for path in outputs:  # no partial or stale output for a failed slide
            remove_path(path)
        return SlideOutcome(entry, "failed", error=msg, stale=stale)
    outcome.stale = stale
    log.info("%s: %d region(s) in %.1fs", entry.slide_id, outcome.n_regions, outcome.seconds)
    return outcome


def concat_regions(out: Path, outcomes: list[SlideOutcome], chash: str) -> Path:
    """Write ``regions.parquet``: every done slide of this input list, in input order."""
    tables = [
        pq.read_table(slide_outputs(out, o.entry.slide_id)[0]).replace_schema_metadata(None)
        for o in outcomes
        if o.status in ("ok", "skipped")
    ]
    table = pa.concat_tables(tables) if tables else REGION_SCHEMA.empty_table()
    meta = {"stage": STAGE, "config_hash": chash, "n_slides": len(tables)}
    path = out / REGIONS_FILE
    with atomic_output(path) as tmp:
        pq.write_table(with_metadata(table.cast(REGION_SCHEMA), meta), tmp)
    return path


def _log_slide(logger: Any, index: int, outcome: SlideOutcome, out: Path) -> None:
    if outcome.status != "ok":
        return
    sid = outcome.entry.slide_id
    logger.log_metrics(
        {
            "slide/index": index,
            "slide/n_regions": outcome.n_regions,
            "slide/seconds": outcome.seconds,
            f"regions/{sid}": outcome.n_regions,
        }
    )
    logger.log_image(key=f"qc/{sid}", images=[str(slide_outputs(out, sid)[1])], caption=[sid])


def _log_totals(logger: Any, summary: dict[str, Any], outcomes: list[SlideOutcome]) -> None:
    logger.log_metrics({f"total/{k}": v for k, v in summary["totals"].items()})
    rows = [
        [o.entry.slide_id, o.status, o.n_regions, round(o.seconds, 3), o.error or ""]
        for o in outcomes
    ]
    columns = ["slide_id", "status", "n_regions", "seconds", "error"]
    logger.log_table(key="slides", columns=columns, data=rows)


def summarize(outcomes: list[SlideOutcome], chash: str) -> dict[str, Any]:
    """The ``summary.json`` content."""
    by = {s: [o for o in outcomes if o.status == s] for s in ("ok", "failed", "skipped")}
    done = by["ok"] + by["skipped"]
    return {
        "stage": STAGE,
        "config_hash": chash,
        "totals": {
            "slides": len(outcomes),
            "ok": len(by["ok"]),
            "skipped": len(by["skipped"]),
            "failed": len(by["failed"]),
            "regions": int(sum(o.n_regions for o in done)),
            "seconds": round(sum(o.seconds for o in by["ok"]), 3),
        },
        "ok": [o.record() for o in by["ok"]],
        "failed": [o.record() for o in by["failed"]],
        "skipped": [o.record() for o in by["skipped"]],
        "stale": [o.entry.slide_id for o in outcomes if o.stale],
    }


def run(cfg: TileConfig) -> int:
    """Tile every slide of ``cfg.slides`` into ``cfg.out``.

    Returns:
        0 when every slide is done (tiled now or earlier), 1 when any slide failed (the others
        are still processed and written).

    Raises:
        ConfigError: invalid settings or slide list (before anything is written).
        LockedError: another run holds ``cfg.out``.
    """
    validate(cfg)
    entries = discover_slides(cfg.slides)
    out = Path(cfg.out)
    chash = tiling_hash(cfg)
    inputs: list[str | Path] = [cfg.slides, *(e.path for e in entries)]
    if cfg.roi.active and not cfg.annotations and not any(e.annotations for e in entries):
        raise ConfigError(
            "roi.include, roi.exclude or roi.required is set but no slide has annotations; pass "
            "ANNOTATIONS=<folder of <slide_id>.geojson> or an annotations column in the manifest"
        )
    if cfg.annotations and not Path(cfg.annotations).expanduser().is_dir():
        raise ConfigError(f"annotations={cfg.annotations} is not a folder of <slide_id>.geojson")
    folders = ("slides", "qc", GEOJSON_FOLDER)
    with StageRun(STAGE, cfg, out, inputs=inputs, subfolders=folders, chash=chash) as run:
        outcomes = []
        with logging_redirect_tqdm():
            for i, entry in enumerate(tqdm(entries, desc="tile", unit="slide", disable=None)):
                outcomes.append(process_entry(entry, cfg, out, chash))
                _log_slide(run.logger, i, outcomes[-1], out)
        concat_regions(out, outcomes, chash)
        summary = summarize(outcomes, chash)
        run.write_summary(summary)
        _log_totals(run.logger, summary, outcomes)
        run.done({"totals": summary["totals"]})
        if summary["totals"]["failed"]:
            run.close_logger(ok=False)
    totals = summary["totals"]
    log.info("tile: %d ok, %d skipped, %d failed, %d regions -> %s", totals["ok"],
             totals["skipped"], totals["failed"], totals["regions"], out)  # fmt: skip
    if totals["failed"]:
        log.error("%d slide(s) failed; see %s", totals["failed"], out / "summary.json")
        return 1
    return 0
