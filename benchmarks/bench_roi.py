"""Tiling time per slide with QuPath annotations (ROI + exclusions) vs without, same process.

Usage::

    python benchmarks/bench_roi.py [--slide-px 40000] [--vertices 720] [--repeats 3]
    make bench-roi slide_px=40000                   # key=value forms are accepted too

The slide is bench_tile's synthetic 40k x 40k slide at 0.5 µm/px. The annotations are what a
pathologist draws: one ``Tumor`` outline (a smooth blob of ``--vertices`` points over about half
the slide), five round ``Pen`` marks and twenty small ``Artifact`` polygons inside it. Both runs
tile the same slide with the tile stage's own per-slide function (thumbnail, tissue mask, region
selection, QC picture, QuPath export, parquet), by default without the verification reads
(``--verify-read 1`` adds them, as ``make tile`` does), best of ``--repeats``; the baseline is
the run without annotations.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_tile import bench_slide  # noqa: E402
from hipt.slides.inputs import SlideEntry  # noqa: E402
from hipt.tile.config import TileConfig, tiling_hash  # noqa: E402
from hipt.tile.runner import annotation_file, source_identity, tile_slide  # noqa: E402


def annotations(size: int, vertices: int, seed: int) -> dict:
    """A QuPath FeatureCollection: a tumor blob, pen marks and artefacts inside it."""
    import shapely
    from shapely.geometry import mapping

    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * math.pi, vertices, endpoint=False)
    radius = size * (0.36 + 0.04 * np.sin(5 * angles) + 0.02 * rng.standard_normal(vertices))
    tumor = shapely.Polygon(np.c_[size / 2 + radius * np.cos(angles),
                                  size / 2 + radius * np.sin(angles)])  # fmt: skip
    tumor = shapely.make_valid(tumor)

    def inside(n: int, r: float) -> list:
        points = size / 2 + (rng.random((n, 2)) - 0.5) * size * 0.4
        return [shapely.Point(x, y).buffer(r * size, quad_segs=16) for x, y in points]

    objects = [(tumor, "Tumor"), *[(g, "Pen") for g in inside(5, 0.02)],
               *[(g.envelope, "Artifact") for g in inside(20, 0.004)]]  # fmt: skip
    feats = [
        {"type": "Feature", "geometry": mapping(g),
         "properties": {"objectType": "annotation", "classification": {"name": c}}}
        for g, c in objects
    ]  # fmt: skip
    return {"type": "FeatureCollection", "features": feats}


def tile_once(entry: SlideEntry, cfg: TileConfig, out: Path) -> float:
    identity = source_identity(entry, annotation_file(entry, cfg))
    t0 = time.perf_counter()
    outcome = tile_slide(entry, cfg, out, tiling_hash(cfg), identity)
    seconds = time.perf_counter() - t0
    return seconds if outcome.status == "ok" else math.nan


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide-px", type=int, default=40_000)
    parser.add_argument("--vertices", type=int, default=720)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verify-read", type=int, default=0, help="1: decode kept regions too")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "bench")
    flags = [f"--{a.replace('_', '-')}" if "=" in a and not a.startswith("-") else a
             for a in argv]  # fmt: skip
    args = parser.parse_args([p for f in flags for p in f.split("=", 1)])
    logging.basicConfig(level=logging.WARNING)
    args.data.mkdir(parents=True, exist_ok=True)
    slide = bench_slide(args.data, args.slide_px, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        notes = root / "notes"
        notes.mkdir()
        entry = SlideEntry(slide_id=slide.path.stem, path=slide.path)
        (notes / f"{entry.slide_id}.geojson").write_text(
            json.dumps(annotations(args.slide_px, args.vertices, args.seed))
        )
        verify = bool(args.verify_read)
        plain = TileConfig(slides=str(slide.path), out=str(root / "a"), verify_read=verify)
        roi = TileConfig(slides=str(slide.path), out=str(root / "b"), verify_read=verify,
                         annotations=str(notes))  # fmt: skip
        roi.roi.include, roi.roi.exclude = ["Tumor"], ["Pen", "Artifact"]
        tile_once(entry, plain, root / "a")  # warm the page cache and imports
        t_plain = min(tile_once(entry, plain, root / "a") for _ in range(args.repeats))
        t_roi = min(tile_once(entry, roi, root / "b") for _ in range(args.repeats))
        n_plain = len(json.loads((root / "a/geojson" / f"{entry.slide_id}.geojson").read_text())
                      ["features"]) - 1  # fmt: skip
        n_roi = len(json.loads((root / "b/geojson" / f"{entry.slide_id}.geojson").read_text())
                    ["features"]) - 1  # fmt: skip
    print(f"slide {slide.path.name}: {args.slide_px}x{args.slide_px} px at 0.5 µm/px; annotations: "
          f"1 Tumor outline of {args.vertices} vertices, 5 Pen, 20 Artifact")  # fmt: skip
    print(f"baseline  no annotations:   {t_plain:6.2f} s per slide  ({n_plain} regions kept)")
    print(f"ours      Tumor - Pen - Art: {t_roi:6.2f} s per slide  ({n_roi} regions kept)")
    print(f"ratio     {t_roi / t_plain:.2f}x the time of tiling without annotations")


if __name__ == "__main__":
    main(sys.argv[1:])
