"""One prepared check for a lent GPU machine: the GPU tests and the GPU benchmarks, one report.

Usage::

    make gpu-check                      # on a CUDA machine (after make setup-gpu): gpu_report.md
    make gpu-check dry_run=1            # on CPU: every CPU-detectable part, tiny models
    python benchmarks/gpu_check.py [--out gpu_report.md] [--regions 16] [--dry-run]

Steps (about 6 minutes on one H100; each step's time is in the report):

1. Environment: GPUs, driver, torch and its CUDA build, cuCIM and whether cupy / nvImageCodec
   (``cuslide2``) are installed.
2. ``HIPT_REQUIRE_CUDA=1 pytest -m gpu``: decode paths equal CPU pixels and ran on the GPU,
   extraction features vs CPU fp32, pretrain-4k on 1 GPU (and 2-rank NCCL with 2 GPUs),
   finetune, predict, heatmap, ``torch.compile``.
3. Extraction end to end from an SVS of real tissue (``--regions`` regions at 0.5 µm/px) with
   ViT-S/16 + ViT-4K at bf16, per decode path: ``cpu`` (worker processes), ``gpu_batch`` with
   cuCIM's ``cuslide``, and with ``cuslide2`` where nvImageCodec is installed: regions/s, peak
   GPU memory, the share of the bf16 compute floor (the encoders' FLOPs per region at the
   measured bf16 matmul peak), and the features' agreement with the ``cpu`` path.
4. The decode default this machine supports: the fastest path, to set as
   ``hipt.slides.decode.AUTO`` when it beats ``cpu`` by more than 10 %.

Without CUDA (and without ``--dry-run``) it says so in one line and exits 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hipt.models.runtime import nvidia_driver  # noqa: E402

#: A decode path must beat ``cpu`` by this much to become the default.
WIN_MARGIN = 1.10


def environment() -> dict[str, Any]:
    """What this machine is: GPUs, driver, torch / CUDA build, cuCIM and its GPU plugins."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "driver": nvidia_driver(),
        "cuda_available": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
        "cupy": importlib.util.find_spec("cupy") is not None,
        "nvimgcodec": importlib.util.find_spec("nvidia.nvimgcodec") is not None,
        "cpu_cores": os.cpu_count(),
    }
    try:
        from importlib.metadata import version

        info["cucim"] = version("cucim-cu13")
    except Exception:  # noqa: BLE001 - reported as absent
        info["cucim"] = None
    return info


def run_gpu_tests(timeout_s: int) -> dict[str, Any]:
    """``pytest -m gpu`` with ``HIPT_REQUIRE_CUDA=1``: counts and the failing tests' names."""
    env = {**os.environ, "HIPT_REQUIRE_CUDA": "1", "WANDB_MODE": "disabled"}
    t0 = time.perf_counter()
    try:
        res = subprocess.run(
            [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfE"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        out, code = res.stdout + res.stderr, res.returncode
    except subprocess.TimeoutExpired as err:
        out, code = f"{err.stdout or ''}\ntimed out after {timeout_s} s", 124
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", out)}
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.M)
    return {
        "exit_code": code,
        "counts": counts,
        "failed": failed,
        "seconds": round(time.perf_counter() - t0, 1),
        "tail": out[-1500:],
    }


def bench_slide(folder: Path, regions: int) -> Path:
    """A pyramidal SVS of real tissue, ``regions`` 4096-px regions at 0.5 µm/px, all tissue."""
    from hipt.samples import sample_slide_path
    from hipt.slides.synthetic import make_synthetic_slide

    side = int(np.ceil(np.sqrt(regions)))
    rows = int(np.ceil(regions / side))
    w, h = side * 4096, rows * 4096
    path = folder / f"gpu_check_{w}x{h}.svs"
    if not path.is_file():
        make_synthetic_slide(
            path, w, h, 0.5, source=sample_slide_path(), seed=0, tissue_fraction=0.9
        )
    return path


def _stage(module: str, args: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", module, *args, "wandb.mode=disabled"],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed: {res.stderr[-2000:]}")
    return time.perf_counter() - t0


def matmul_peak(device: str, dtype: torch.dtype, n: int = 8192, reps: int = 20) -> float:
    """Measured dense matmul throughput in FLOP/s (the compute floor's denominator)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def flops_per_region(model_256: str, model_4k: str) -> float:
    """FLOPs (2 x multiply-adds) of one region: 256 patches through the ViT-256 and the 16 x 16
    grid through the ViT-4K, counted analytically as ``make bench-models`` does (torch's
    FlopCounterMode misses fused attention on CPU)."""
    from bench_models import vit_gflops
    from hipt.models import build

    vit256, vit4k = build(model_256), build(model_4k)
    d, depth = int(vit256.embed_dim), len(vit256.blocks)
    d4, depth4, d_in = int(vit4k.embed_dim), len(vit4k.blocks), int(vit4k.input_dim)
    blocks4 = vit_gflops(16, 1, d4, depth4) * 1e9 - 2 * 256 * 3 * d4  # minus a pixel embed
    return vit_gflops(256, 16, d, depth) * 1e9 * 256 + 2 * 256 * d_in * d4 + blocks4


def _features(folder: Path) -> np.ndarray:
    from hipt.features import open_store

    return np.concatenate([open_store(p).feats256() for p in sorted(folder.glob("*.zarr"))])


def bench_decode(
    tiles: Path,
    work: Path,
    paths: list[tuple[str, str, dict[str, str]]],
    models: tuple[str, str],
    accelerator: str,
) -> list[dict[str, Any]]:
    """Extraction end to end per decode path: regions/s, peak GPU memory, features vs ``cpu``."""
    rows = []
    reference = None
    for label, decode, env in paths:
        out = work / f"extract_{label}"
        args = [
            f"TILES={tiles}",
            f"OUT={out}",
            f"model_256={models[0]}",
            f"model_4k={models[1]}",
            f"accelerator={accelerator}",
            f"decode={decode}",
            "progress=false",
            "dtype=float32",
            "overwrite=true",
        ]
        wall = _stage("pipelines.extract_features", args, env)
        summary = json.loads((out / "summary.json").read_text())
        feats = _features(out)
        if reference is None:
            reference = feats
        cos = (feats * reference).sum(-1) / (
            np.linalg.norm(feats, axis=-1) * np.linalg.norm(reference, axis=-1)
        )
        rows.append(
            {
                "path": label,
                "regions_per_s": summary["totals"]["regions_per_s"],
                "wall_s": round(wall, 1),
                "peak_gpu_memory_gb": summary.get("peak_gpu_memory_gb"),
                "decode": summary.get("decode", {}),
                "precision": summary.get("precision"),
                "cosine_vs_cpu": round(float(cos.mean()), 6),
            }
        )
    return rows


def bench_encoders(dry: bool, timeout_s: int = 240) -> str:
    """images/s and peak memory of every encoder family vs ViT-S/16 on this device (bf16)."""
    args = ["--device", "cpu", "--quick"] if dry else ["--device", "cuda", "--budget-s", "20"]
    try:
        res = subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "bench_encoders.py"), *args],
            cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"not finished within {timeout_s} s\n"
    if res.returncode != 0:
        return f"failed (exit {res.returncode}): {res.stderr[-800:]}\n"
    return res.stdout


def report(
    env: dict[str, Any],
    tests: dict[str, Any],
    rows: list[dict[str, Any]],
    floor: dict[str, Any],
    choice: dict[str, Any],
    dry_run: bool,
    seconds: float,
) -> str:
    """The markdown report."""
    lines = ["# hipt gpu-check report", ""]
    if dry_run:
        lines += [
            "**DRY RUN on CPU**: the CPU-detectable parts only (tiny models, `cpu` decode);",
            "no number below is a GPU number.",
            "",
        ]
    lines += ["## Machine", "", "| item | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    lines += ["", "## GPU tests (`HIPT_REQUIRE_CUDA=1 pytest -m gpu`)", ""]
    if tests.get("skipped_reason"):
        lines.append(f"not run: {tests['skipped_reason']}")
    else:
        lines.append(f"exit code {tests['exit_code']}, {tests['counts']}, {tests['seconds']} s")
        lines += [f"- FAILED {name}" for name in tests["failed"]]
    lines += [
        "",
        "## Extraction end to end, per decode path",
        "",
        f"{floor['regions']} regions of 4096 px; encoders {floor['models']}; compute floor: "
        f"{floor['flops_per_region'] / 1e12:.3f} TFLOP per region at the measured "
        f"{floor['dtype']} matmul peak {floor['peak_tflops']:.1f} TFLOP/s",
        "",
        "| decode path | regions/s | share of compute floor | peak GPU memory (GB) | "
        "features vs cpu (mean cosine) | wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = r["regions_per_s"] * floor["flops_per_region"] / (floor["peak_tflops"] * 1e12)
        lines.append(
            f"| {r['path']} | {r['regions_per_s']} | {share:.0%} | "
            f"{r['peak_gpu_memory_gb']} | {r['cosine_vs_cpu']} | {r['wall_s']} |"
        )
    lines += ["", "## Decode default", "", choice["text"], "", f"Total: {seconds:.0f} s."]
    return "\n".join(lines) + "\n"


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest decode path, and whether it should replace ``cpu`` as the default."""
    cpu = next(r for r in rows if r["path"] == "cpu")
    best = max(rows, key=lambda r: r["regions_per_s"])
    if best is cpu or best["regions_per_s"] < WIN_MARGIN * cpu["regions_per_s"]:
        text = (
            f"keep `decode=auto` = `cpu`: fastest or within {WIN_MARGIN - 1:.0%} of the "
            f"fastest ({cpu['regions_per_s']} regions/s)."
        )
        return {"default": "cpu", "text": text}
    mode = "gpu_batch"
    text = (
        f'set `hipt.slides.decode.AUTO = "{mode}"`: {best["path"]} reaches '
        f"{best['regions_per_s']} regions/s against {cpu['regions_per_s']} for cpu "
        f"({best['regions_per_s'] / cpu['regions_per_s']:.2f}x)."
    )
    return {"default": mode, "text": text}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "gpu_report.md")
    parser.add_argument("--regions", type=int, default=16)
    parser.add_argument("--dry-run", type=int, default=0, help="1: CPU-detectable parts only")
    parser.add_argument("--tests-timeout", type=int, default=300)
    flags = [f"--{a.replace('_', '-')}" if "=" in a and not a.startswith("-") else a for a in argv]
    args = parser.parse_args([p for f in flags for p in f.split("=", 1)])
    dry = bool(args.dry_run)
    env = environment()
    if not env["cuda_available"] and not dry:
        why = (
            f"driver {env['driver']} cannot run torch's CUDA {env['torch_cuda']} build"
            if env["driver"]
            else "no NVIDIA driver is loaded"
        )
        print(
            f"gpu-check: torch cannot use CUDA here ({why}); run it on a GPU machine "
            "(or dry_run=1 for the CPU-detectable parts)",
            file=sys.stderr,
        )
        return 1
    t0 = time.perf_counter()
    tests = {"skipped_reason": "dry run (no GPU)"} if dry else run_gpu_tests(args.tests_timeout)
    models = ("vit256_tiny_test", "vit4k_tiny_test") if dry else ("vit256_small", "vit4k_xs")
    regions = min(args.regions, 2) if dry else args.regions
    paths = [("cpu", "cpu", {})]
    if not dry and env["cupy"]:
        paths.append(("gpu_batch (cuslide)", "gpu_batch", {"ENABLE_CUSLIDE2": "0"}))
        if env["nvimgcodec"]:
            paths.append(("gpu_batch (cuslide2)", "gpu_batch", {"ENABLE_CUSLIDE2": "1"}))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        slide = bench_slide(REPO / "data" / "bench", regions)
        _stage("pipelines.tile", [f"SLIDES={slide}", f"OUT={work / 'tiles'}"])
        rows = bench_decode(work / "tiles", work, paths, models, "cpu" if dry else "gpu")
    device, dtype = ("cpu", torch.float32) if dry else ("cuda", torch.bfloat16)
    floor = {
        "regions": regions,
        "models": " + ".join(models),
        "flops_per_region": flops_per_region(*models),
        "dtype": str(dtype).split(".")[-1],
        "peak_tflops": matmul_peak(device, dtype, n=2048 if dry else 8192) / 1e12,
    }
    choice = choose(rows)
    encoders = bench_encoders(dry)
    text = report(env, tests, rows, floor, choice, dry, time.perf_counter() - t0)
    text += "\n## Patch encoders (`make bench-encoders`)\n\n" + encoders
    args.out.write_text(text)
    print(text)
    print(f"gpu-check: report written to {args.out}")
    failed = not dry and (tests.get("exit_code") != 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
