"""Region reading: our reader (cuCIM batch) vs a CLAM-style OpenSlide loop; peak RSS vs slide size.

Usage::

    python benchmarks/bench_tile.py [--slide-px 40000] [--max-regions 12] [--workers 2]
    make bench-tile max_regions=24 workers=2        # key=value forms are accepted too

Both readers read the same 4096-px regions (those of the slide's known tissue layout, ~40 % of the
area) of a synthetic 40k x 40k slide at 0.5 µm/px, so level 0 is the 0.5 µm/px level and a region
is 16 x 16 patches of 256 px:

* ours:     ``open_slide(...).read_regions(regions, level=0, 4096, 4096, num_workers)``
* baseline: CLAM's patch loop, one process: ``OpenSlide.read_region(patch, 0, (256, 256))``
            ``.convert("RGB")`` for each of the 256 patches of a region.

Peak RSS is measured in a fresh subprocess per slide size (20k and 80k px) that reads every tissue
region with our reader; it must not grow with the slide size.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hipt.slides import open_slide  # noqa: E402
from hipt.slides.synthetic import SyntheticSlide, make_synthetic_slide  # noqa: E402

MPP = 0.5
LEVELS = (1, 4, 16, 64)
PATCH = 256


def bench_slide(folder: Path, size: int, seed: int) -> SyntheticSlide:
    """The benchmark slide of ``size`` x ``size`` px, written on first use (layout saved beside)."""
    path = folder / f"synthetic_{size}px_mpp{MPP}_seed{seed}.svs"
    layout_path = path.with_suffix(".layout.npy")
    cell_px = round(256 * 0.5 / MPP)
    if path.is_file() and layout_path.is_file():
        layout = np.load(layout_path)
        return SyntheticSlide(path, (size, size), MPP, LEVELS, layout, cell_px)
    print(f"generating {path} (once; {size}x{size} px) ...", flush=True)
    t0 = time.perf_counter()
    slide = make_synthetic_slide(path, size, size, MPP, levels=LEVELS, seed=seed)
    np.save(layout_path, slide.layout)
    mb = path.stat().st_size / 1e6
    print(f"  wrote {mb:.0f} MB in {time.perf_counter() - t0:.0f} s", flush=True)
    return slide


def warm_page_cache(path: Path) -> None:
    """Read the file once so both contenders read from the page cache, not the disk."""
    with open(path, "rb") as fh:
        while fh.read(64 << 20):
            pass


def read_ours(path: Path, regions: list[tuple[int, int]], region_px: int, workers: int) -> float:
    t0 = time.perf_counter()
    with open_slide(path) as reader:
        for region in reader.read_regions(regions, 0, region_px, region_px, num_workers=workers):
            region[0, 0].sum()
    return time.perf_counter() - t0


def read_clam_style(path: Path, regions: list[tuple[int, int]], region_px: int) -> float:
    import openslide

    t0 = time.perf_counter()
    slide = openslide.OpenSlide(str(path))
    for x, y in regions:
        for py in range(0, region_px, PATCH):
            for px in range(0, region_px, PATCH):
                patch = slide.read_region((x + px, y + py), 0, (PATCH, PATCH)).convert("RGB")
                np.asarray(patch)
    slide.close()
    return time.perf_counter() - t0


def same_pixels(path: Path, x: int, y: int, region_px: int) -> bool:
    """Our region equals the baseline's 256 patches stitched together."""
    import openslide

    with open_slide(path) as reader:
        ours = reader.read_region(x, y, 0, region_px, region_px)
    slide = openslide.OpenSlide(str(path))
    rows = []
    for py in range(0, region_px, PATCH):
        row = [slide.read_region((x + px, y + py), 0, (PATCH, PATCH)).convert("RGB")
               for px in range(0, region_px, PATCH)]  # fmt: skip
        rows.append(np.concatenate([np.asarray(p) for p in row], axis=1))
    slide.close()
    return bool(np.array_equal(ours, np.concatenate(rows, axis=0)))


def rss_child(path: Path, region_px: int, workers: int, size: int, seed: int) -> None:
    """Subprocess body: read every tissue region, print peak RSS as JSON."""
    slide = bench_slide(path.parent, size, seed)
    regions = slide.tissue_regions(region_px)
    t0 = time.perf_counter()
    with open_slide(path) as reader:
        for region in reader.read_regions(regions, 0, region_px, region_px, num_workers=workers):
            region[0, 0].sum()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"regions": len(regions), "seconds": time.perf_counter() - t0,
                      "peak_rss_mb": peak_kb / 1024}))  # fmt: skip


def measure_rss(folder: Path, size: int, args: argparse.Namespace) -> dict[str, float]:
    slide = bench_slide(folder, size, args.seed)
    cmd = [sys.executable, __file__, "--rss-child", str(slide.path), "--rss-size", str(size),
           "--region-px", str(args.region_px), "--workers", str(args.workers),
           "--seed", str(args.seed)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"RSS child for {size} px failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide-px", type=int, default=40_000, help="side of the speed slide")
    parser.add_argument("--region-px", type=int, default=4096)
    parser.add_argument(
        "--max-regions", type=int, default=12, help="fixed random subset read by both (0 = all)"
    )
    parser.add_argument("--workers", type=int, default=2, help="num_workers of our reader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rss-sizes", default="20000,80000", help="slide sides for peak RSS")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "bench")
    parser.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rss-size", type=int, help=argparse.SUPPRESS)
    known = {a.dest for a in parser._actions}
    flags: list[str] = []
    for arg in argv:  # `make bench-tile max_regions=24` forwards key=value pairs
        key, eq, value = arg.partition("=")
        if eq and not arg.startswith("-"):
            if key.replace("-", "_").lower() in known:
                flags += [f"--{key.replace('_', '-').lower()}", value]
            else:
                print(f"ignoring unknown argument {arg}", file=sys.stderr)
        else:
            flags.append(arg)
    return parser.parse_args(flags)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.rss_child is not None:
        rss_child(args.rss_child, args.region_px, args.workers, args.rss_size, args.seed)
        return
    logging.basicConfig(level=logging.WARNING)
    args.data.mkdir(parents=True, exist_ok=True)
    slide = bench_slide(args.data, args.slide_px, args.seed)
    regions = slide.tissue_regions(args.region_px)
    total = len(regions)
    if args.max_regions and total > args.max_regions:
        rng = np.random.default_rng(args.seed)
        picked = rng.choice(total, size=args.max_regions, replace=False)
        regions = [regions[i] for i in sorted(picked)]
    n = len(regions)
    grid = math.ceil(args.slide_px / args.region_px) ** 2
    print(f"slide {slide.path.name}: {args.slide_px}x{args.slide_px} px at {MPP} µm/px, "
          f"{total}/{grid} regions of {args.region_px} px hold tissue; reading "
          f"{'all' if n == total else f'a fixed random subset of {n}'} with both readers "
          f"({args.region_px // PATCH}x{args.region_px // PATCH} patches of {PATCH} px each), "
          f"{os.cpu_count()} CPU cores")  # fmt: skip
    warm_page_cache(slide.path)
    print(f"pixels identical (ours vs baseline, region {regions[0]}): "
          f"{same_pixels(slide.path, *regions[0], args.region_px)}")  # fmt: skip
    with open_slide(slide.path) as reader:
        backend = reader.backend
    t_base = read_clam_style(slide.path, regions, args.region_px)
    t_ours = read_ours(slide.path, regions, args.region_px, args.workers)
    base_rate, ours_rate = n / t_base, n / t_ours
    print(
        f"baseline  CLAM-style OpenSlide, 1 process, per-256-px patch: {base_rate:6.2f} regions/s"
        f"  ({n * (args.region_px // PATCH) ** 2 / t_base:6.0f} patches/s, {t_base:.1f} s)"
    )
    print(f"ours      open_slide ({backend}) read_regions, num_workers={args.workers}:  "
          f"{ours_rate:6.2f} regions/s  ({n * (args.region_px // PATCH) ** 2 / t_ours:6.0f} "
          f"patches/s, {t_ours:.1f} s)")  # fmt: skip
    print(f"speed-up  {ours_rate / base_rate:.2f}x (target >= 2x)")
    if args.skip_rss:
        return
    print("peak RSS reading every tissue region, fresh process per slide:")
    results = {}
    for size in (int(s) for s in args.rss_sizes.split(",")):
        res = measure_rss(args.data, size, args)
        results[size] = res
        print(f"  {size:>6}x{size:<6} {res['regions']:4d} regions in {res['seconds']:6.1f} s  "
              f"peak RSS {res['peak_rss_mb']:7.0f} MB")  # fmt: skip
    sizes = sorted(results)
    if len(sizes) > 1:
        ratio = results[sizes[-1]]["peak_rss_mb"] / results[sizes[0]]["peak_rss_mb"]
        area = (sizes[-1] / sizes[0]) ** 2
        print(f"  peak RSS ratio {ratio:.2f} for {area:.0f}x the slide area (flat = bounded)")


if __name__ == "__main__":
    main(sys.argv[1:])
