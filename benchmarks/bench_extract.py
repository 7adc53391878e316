"""Feature extraction: our stage vs an official-HIPT-style loop, same weights, same regions.

Usage::

    python benchmarks/bench_extract.py [--tiny] [--regions 2] [--rss]
    make bench-extract tiny=true regions=4          # key=value forms are accepted too

Inputs: the real sample SVS (one 4096 region, read at 4104 px and resized) and a synthetic
8192 x 8192 slide at 0.5 µm/px (four 4096 regions, ~40 % tissue), tiled by ``pipelines.tile``;
the first ``--regions`` regions of each are timed.

* official-style: per region, ``OpenSlide.read_region`` -> PIL RGB (outside the slide white, as
  ours; resized when the read size is not 4096) -> ``ToTensor`` + ``Normalize(0.5, 0.5)`` ->
  unfold into 256 patches -> one forward of all 256 patches through an explicit-attention
  ViT-256 (the DINO code's attention) -> ViT-4K; fp32, synchronous; features of each slide
  saved with ``torch.save``.
* ours: ``hipt.extract.runner.run`` with the default config (stores in Zarr), end to end
  (planning, Trainer start-up, reading, encoding, writing), then with ``skip_background=true``.

Both use the same exported weights. Wall and CPU seconds are reported: on a shared machine the
CPU-time ratio is the steadier one. It also prints the ViT-256 forward's share of the fp32 matmul
ceiling (at the stage's batch size, both measured back to back), feature differences (float16
storage, skip_background, official loop) and, with ``--rss``, peak RSS vs slide size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import make_style_args, matmul_peak_gflops, vit_gflops  # noqa: E402
from hipt.config import load_config  # noqa: E402
from hipt.extract.config import ExtractConfig  # noqa: E402
from hipt.extract.runner import run as run_stage  # noqa: E402
from hipt.features import open_store  # noqa: E402
from hipt.models import build, export_model  # noqa: E402
from hipt.models.reference import ExplicitVit4K, ExplicitVit256  # noqa: E402

_FLAGS = frozenset({"tiny", "rss", "compile"})


def _tile(slides: Path, out: Path) -> Path:
    from pipelines.tile import main as tile_main

    if tile_main([f"slides={slides}", f"out={out}", "wandb.mode=disabled"]) != 0:
        raise SystemExit(f"tiling {slides} failed")
    return out


def _limit_regions(tiles: Path, out: Path, n: int) -> Path:
    """Copy of ``tiles`` keeping the first ``n`` regions of each slide (metadata kept)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(tiles / "regions.parquet")
    table = table.filter(pc.less(table["region"], n))
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "regions.parquet")
    return out


def _inputs(work: Path) -> Path:
    from hipt.samples import sample_slide_path
    from hipt.slides.synthetic import make_synthetic_slide

    slides = work / "slides"
    slides.mkdir()
    sample = sample_slide_path()
    shutil.copy(sample, slides / sample.name)
    make_synthetic_slide(slides / "synthetic.svs", 8192, 8192, 0.5, levels=(1, 4, 16), seed=7)
    return _tile(slides, work / "tiles_all")


def _weights(work: Path, tiny: bool) -> tuple[str, str, Path, Path]:
    names = ("vit256_tiny_test", "vit4k_tiny_test") if tiny else ("vit256_small", "vit4k_xs")
    torch.manual_seed(0)
    p256 = export_model(build(names[0]), work / "w256")
    p4k = export_model(build(names[1]), work / "w4k")
    return names[0], names[1], p256, p4k


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (reader workers)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def official_loop(tiles: Path, out: Path, m256: str, m4k: str, p256: Path, p4k: Path) -> float:
    """The official HIPT_4K recipe, one region at a time; returns seconds (model build excluded)."""
    import openslide
    from PIL import Image
    from torchvision import transforms

    from hipt.slides.regions import read_regions

    ours256, ours4k = build(m256, checkpoint=p256), build(m4k, checkpoint=p4k)
    vit256 = ExplicitVit256(embed_dim=ours256.embed_dim, depth=len(ours256.blocks),
                            num_heads=ours256.blocks[0].attn.num_heads).eval()  # fmt: skip
    vit256.load_state_dict(ours256.state_dict(), strict=True)
    vit4k = ExplicitVit4K(input_dim=ours4k.input_dim, embed_dim=ours4k.embed_dim,
                          depth=len(ours4k.blocks), num_heads=ours4k.num_heads).eval()  # fmt: skip
    vit4k.load_state_dict({k: v for k, v in ours4k.state_dict().items()}, strict=True)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    df = read_regions(tiles / "regions.parquet")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for slide_id, rows in df.groupby("slide_id", sort=False):
            osr = openslide.OpenSlide(str(rows.slide_path.iloc[0]))
            f256, f4k = [], []
            for row in rows.itertuples():
                size = int(row.read_size)
                img = osr.read_region((int(row.x), int(row.y)), int(row.read_level), (size, size))
                # White outside the slide as ours (``convert("RGB")`` alone would paint it black).
                img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img).convert(
                    "RGB"
                )
                if size != 4096:
                    img = img.resize((4096, 4096), Image.BILINEAR)
                x = tf(img).unsqueeze(0)
                patches = x.unfold(2, 256, 256).unfold(3, 256, 256)  # [1, 3, 16, 16, 256, 256]
                patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(256, 3, 256, 256)
                feats = vit256(patches)  # one region = one batch of 256 patches
                grid = feats.reshape(16, 16, -1).permute(2, 0, 1).unsqueeze(0)
                f256.append(feats)
                f4k.append(vit4k(grid))
            torch.save({"feats256": torch.stack(f256), "feats4k": torch.cat(f4k)},
                       out / f"{slide_id}.pt")  # fmt: skip
            osr.close()
    return time.perf_counter() - t0


def ours(tiles: Path, out: Path, m256: str, m4k: str, p256: Path, p4k: Path, *extra: str) -> float:
    """Our stage end to end with default settings (plus ``extra`` overrides); seconds."""
    overrides = [f"tiles={tiles}", f"out={out}", f"model_256={m256}", f"model_4k={m4k}",
                 f"checkpoint256={p256}", f"checkpoint4k={p4k}", "wandb.mode=disabled",
                 "progress=false", *extra]  # fmt: skip
    cfg = load_config(ExtractConfig, "extract.yaml", overrides)
    t0 = time.perf_counter()
    code = run_stage(cfg)
    if code != 0:
        raise SystemExit(f"extraction failed ({code})")
    return time.perf_counter() - t0


def _rel(a: np.ndarray, b: np.ndarray) -> str:
    err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    return f"max|d|/max|ref|={err:.2e}, min cos={cos.min():.6f}"


def fidelity(work: Path, slides: list[str]) -> list[str]:
    """Feature differences between the runs, per slide."""
    lines = []
    for sid in slides:
        ref = torch.load(work / "official" / f"{sid}.pt")
        r256, r4k = ref["feats256"].numpy(), ref["feats4k"].numpy()
        f32 = open_store(work / "ours_f32" / f"{sid}.zarr")
        f16 = open_store(work / "ours" / f"{sid}.zarr")
        skip = open_store(work / "ours_skip" / f"{sid}.zarr")
        bg = ~skip.patch_mask()
        lines += [
            f"{sid}: ours fp32 store vs official loop: feats256 {_rel(f32.feats256(), r256)}; "
            f"feats4k {_rel(f32.feats4k(), r4k)}",
            f"{sid}: float16 vs float32 store: feats256 {_rel(f16.feats256(), f32.feats256())}; "
            f"feats4k {_rel(f16.feats4k(), f32.feats4k())}",
            f"{sid}: skip_background vs default ({bg.mean():.0%} background patches): "
            f"background feats256 {_rel(skip.feats256()[bg], f16.feats256()[bg])}; "
            f"tissue feats256 {_rel(skip.feats256()[~bg], f16.feats256()[~bg])}; "
            f"feats4k {_rel(skip.feats4k(), f16.feats4k())}",
        ]
    return lines


def _timed(fn: Any, *args: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0, cpu_seconds() - c0


def forward_share(m256: str, p256: Path, batch: int, compiled: bool, rounds: int = 2) -> str:
    """ViT-256 forward alone at the stage's batch size vs the fp32 matmul ceiling.

    Each round times a 2048^3 matmul and one forward back to back; the best round counts. The
    CPU-time columns divide by CPU seconds used (x threads), which a shared machine's other
    processes disturb far less than wall time.
    """
    model = build(m256, checkpoint=p256).eval()
    gflop = vit_gflops(256, 16, model.embed_dim, len(model.blocks)) * batch
    fn = torch.compile(model) if compiled else model
    x = torch.randn(batch, 3, 256, 256)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    mm_gflop = 2 * 2048**3 / 1e9
    threads = torch.get_num_threads()
    best: dict[str, float] = {"fw": 0.0, "fc": 0.0, "pw": 0.0, "pc": 0.0}
    with torch.inference_mode():
        fn(x if compiled else x[:2])
        torch.mm(a, b)
        for _ in range(rounds):
            pw, pc = min((_timed(torch.mm, a, b) for _ in range(3)), key=lambda t: t[0])
            fw, fc = _timed(fn, x)
            best = {"fw": max(best["fw"], gflop / fw), "fc": max(best["fc"], gflop / fc * threads),
                    "pw": max(best["pw"], mm_gflop / pw),
                    "pc": max(best["pc"], mm_gflop / max(pc, 1e-9) * threads)}  # fmt: skip
    tag = " (compiled)" if compiled else ""
    per_img = gflop / batch
    fw, fc, pw, pc = best["fw"], best["fc"], best["pw"], best["pc"]
    return (f"ViT-256 forward alone{tag}, batch {batch}: wall {fw / per_img:.2f} img/s = "
            f"{fw:.1f} GFLOP/s = {100 * fw / pw:.0f}% of the fp32 matmul ceiling ({pw:.1f}); "
            f"CPU-time {fc / per_img:.2f} img/s = {fc:.1f} GFLOP/s = {100 * fc / pc:.0f}% of "
            f"{pc:.1f}")  # fmt: skip


def peak_rss(work: Path, m256: str, m4k: str) -> list[str]:
    """Peak RSS of a fresh stage process on slides of 4, 16 and 36 regions (tiny encoders).

    Reads run in reader threads of the main process (``num_workers=0``) so one number, the
    process's ``VmHWM`` (fresh after exec, unlike ``ru_maxrss``), covers the whole pipeline.
    """
    from hipt.slides.synthetic import make_synthetic_slide

    lines = []
    for side in (8192, 16384, 24576):
        folder = work / f"rss_{side}"
        (folder / "slides").mkdir(parents=True)
        make_synthetic_slide(folder / "slides" / "s.svs", side, side, 0.5, levels=(1, 4, 16),
                             seed=3, tissue_fraction=0.6)  # fmt: skip
        tiles = _tile(folder / "slides", folder / "tiles")
        code = (
            "import re, sys; from pipelines.extract_features import main; "
            f"c = main(['TILES={tiles}', 'OUT={folder / 'f'}', 'model_256={m256}', "
            f"'model_4k={m4k}', 'wandb.mode=disabled', 'progress=false', 'num_workers=0', "
            "'reader_threads=2']); "
            "print('HWM', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]); "
            "sys.exit(c)"
        )
        res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                             text=True, env={**os.environ, "WANDB_MODE": "disabled"})  # fmt: skip
        hwm = [ln.split()[1] for ln in res.stdout.splitlines() if ln.startswith("HWM")]
        if res.returncode != 0 or not hwm:
            lines.append(f"slide {side}x{side}: RSS run failed: {res.stderr[-500:]}")
            continue
        ok = json.loads((folder / "f" / "summary.json").read_text())["ok"]
        regions = sum(r["n_regions"] for r in ok)
        lines.append(f"slide {side}x{side}: {regions} regions, peak RSS (VmHWM) "
                     f"{int(hwm[0]) / 1024:.0f} MB")  # fmt: skip
    return lines


def main() -> None:
    """Run the comparison and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny test encoders (fast)")
    parser.add_argument("--regions", type=int, default=2, help="regions timed per slide")
    parser.add_argument("--rss", action="store_true", help="also peak RSS vs slide size")
    parser.add_argument("--compile", action="store_true", help="also ours with compile=true")
    parser.add_argument("--workdir", default=None, help="keep files here (default: a tempdir)")
    args = parser.parse_args(make_style_args(sys.argv[1:], _FLAGS))
    logging.basicConfig(level=logging.WARNING)
    load0 = os.getloadavg()
    ctx = contextlib.nullcontext(args.workdir) if args.workdir else tempfile.TemporaryDirectory()
    with ctx as tmp:
        work = Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        tiles = _limit_regions(_inputs(work), work / "tiles", args.regions)
        m256, m4k, p256, p4k = _weights(work, args.tiny)
        from hipt.slides.regions import read_regions

        df = read_regions(tiles / "regions.parquet")
        n = len(df)
        slides = list(dict.fromkeys(df.slide_id))
        w = (m256, m4k, p256, p4k)
        runs: list[tuple[str, Any, tuple[str, ...]]] = [
            ("official-style loop", official_loop, ("official",)),
            ("ours (defaults, float16)", ours, ("ours",)),
            ("ours skip_background=true", ours, ("ours_skip", "skip_background=true")),
            ("ours dtype=float32", ours, ("ours_f32", "dtype=float32")),
        ]
        if args.compile:
            runs.append(("ours compile=true", ours, ("ours_c", "compile=true")))
        times, cpu = {}, {}
        peak = matmul_peak_gflops(torch.device("cpu"), torch.float32, 2048, reps=5)
        for name, fn, (folder, *extra) in runs:
            c0 = cpu_seconds()
            times[name] = fn(tiles, work / folder, *w, *extra)
            cpu[name] = cpu_seconds() - c0
            print(f"  {name}: {times[name]:.1f} s wall, {cpu[name]:.1f} s CPU, load "
                  f"{os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
        base = times["official-style loop"]
        model = build(m256)
        gflop = vit_gflops(256, 16, model.embed_dim, len(model.blocks)) * 256
        peak = max(peak, matmul_peak_gflops(torch.device("cpu"), torch.float32, 2048, reps=5))
        floor = gflop / peak  # seconds per region if the ViT-256 ran at the matmul peak
        print(f"machine: {platform.machine()} {os.cpu_count()} cores, torch threads "
              f"{torch.get_num_threads()}, torch {torch.__version__}; encoders {m256} + {m4k}; "
              f"{n} regions ({', '.join(f'{s}: {(df.slide_id == s).sum()}' for s in slides)}); "
              f"load avg before {load0[0]:.2f}")  # fmt: skip
        print(f"ViT-256 per region: {gflop:.0f} GFLOP; times are end to end (the official loop "
              "without model building, ours with planning and Trainer start-up)")  # fmt: skip
        print(f"compute floor: {gflop:.0f} GFLOP per region at this CPU's fp32 matmul peak "
              f"({peak:.1f} GFLOP/s, 2048^3, best of the runs' start and end) = {floor:.2f} s "
              "per region; 'floor share' = floor / measured s per region")  # fmt: skip
        print(f"{'run':<28} {'seconds':>8} {'regions/s':>10} {'s/region':>9} {'speed-up':>9} "
              f"{'floor share':>11} {'CPU s':>7} {'CPU speed-up':>12}")  # fmt: skip
        for name, secs in times.items():
            print(f"{name:<28} {secs:>8.1f} {n / secs:>10.4f} {secs / n:>9.2f} "
                  f"{base / secs:>8.2f}x {100 * floor * n / secs:>10.0f}% {cpu[name]:>7.1f} "
                  f"{cpu['official-style loop'] / cpu[name]:>11.2f}x")  # fmt: skip
        chosen = json.loads((work / "ours" / "summary.json").read_text())["batch"]
        print(f"ours: batch size {chosen['batch_size']} ({chosen['how']}; measured images/s "
              f"{chosen['images_per_s'] or '-'})")  # fmt: skip
        print(forward_share(m256, p256, int(chosen["batch_size"]), compiled=False))
        if args.compile:
            print(forward_share(m256, p256, int(chosen["batch_size"]), compiled=True))
        print("\n".join(fidelity(work, slides)))
        if args.rss:
            print("\n".join(peak_rss(work, "vit256_tiny_test", "vit4k_tiny_test")))
        print(f"load avg after: {os.getloadavg()[0]:.2f}; max RSS of this process "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
