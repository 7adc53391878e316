"""ViT-256 forward throughput: ours (timm, fused SDPA) vs an explicit-attention ViT-S/16 (DINO).

Both models share the same weights; the table reports images/s, achieved GFLOP/s (analytic FLOPs
of one 256-px forward) and the fraction of the fp32 matmul peak measured in the same process.
On CUDA it also runs bf16 autocast with channels-last inputs.

Usage: ``python benchmarks/bench_models.py [--batch 8] [--iters 5] [--tiny] [--compile]`` or
``make bench-models batch=8 iters=5 tiny=true compile=true``.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from hipt.models import build, prepare_images, prepare_model
from hipt.models.reference import ExplicitVit256


def vit_gflops(img: int, patch: int, dim: int, depth: int, mlp_ratio: float = 4.0) -> float:
    """Analytic GFLOP (2 x multiply-adds) of one ViT forward on an ``img`` x ``img`` image."""
    n = (img // patch) ** 2 + 1  # tokens incl. CLS
    hidden = int(dim * mlp_ratio)
    embed = 2 * (n - 1) * (3 * patch * patch) * dim
    per_block = (
        2 * n * dim * 3 * dim  # qkv
        + 2 * 2 * n * n * dim  # q k^T and attn v
        + 2 * n * dim * dim  # proj
        + 2 * 2 * n * dim * hidden  # fc1 + fc2
    )
    return (embed + depth * per_block) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """Best GFLOP/s of an ``n x n`` matmul (the machine's practical peak for ``dtype``)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def images_per_s(
    fns: dict[str, Callable[[Tensor], Tensor]],
    x: Tensor,
    iters: int,
    warmup: int,
    device: torch.device,
) -> dict[str, tuple[float, float]]:
    """(best, median) images/s per model over ``iters`` timed calls after ``warmup`` calls.

    The models alternate call by call, so drift in a shared machine's speed hits them alike;
    the best call is the estimate least disturbed by other processes (as ``timeit`` advises).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn(x)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn(x)
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {
        name: (x.shape[0] / min(t), x.shape[0] / statistics.median(t)) for name, t in times.items()
    }


_FLAGS = frozenset({"tiny", "compile"})
_MAKE_ONLY = frozenset({"python", "venv", "task"})


def make_style_args(argv: list[str], flags: frozenset[str] = _FLAGS) -> list[str]:
    """Accept ``make bench-models batch=8 tiny=true`` (key=value) as well as ``--batch 8``.

    ``flags`` are the boolean options (``tiny=true`` -> ``--tiny``); the other benchmarks reuse
    this with their own flags.
    """
    out: list[str] = []
    for tok in argv:
        key, sep, value = tok.partition("=")
        if tok.startswith("-") or not sep:
            out.append(tok)
            continue
        key = key.lower().replace("_", "-")
        if key in _MAKE_ONLY:
            continue
        if key in flags:
            if value.lower() in ("1", "true", "yes", "on"):
                out.append(f"--{key}")
            continue
        out += [f"--{key}", value]
    return out


def main() -> None:
    """Parse arguments, run the benchmark, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="patches per forward call")
    parser.add_argument("--iters", type=int, default=5, help="timed calls (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument("--tiny", action="store_true", help="vit256_tiny_test instead of ViT-S")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-n", type=int, default=2048, help="matmul size for the peak")
    args = parser.parse_args(make_style_args(sys.argv[1:]))

    device = torch.device(args.device)
    torch.manual_seed(0)
    name = "vit256_tiny_test" if args.tiny else "vit256_small"
    ours: Any = build(name).eval()
    dims = {
        "embed_dim": ours.embed_dim,
        "depth": len(ours.blocks),
        "num_heads": ours.blocks[0].attn.num_heads,
    }
    baseline: nn.Module = ExplicitVit256(**dims).eval()
    baseline.load_state_dict(ours.state_dict(), strict=True)
    ours, baseline = prepare_model(ours, device), prepare_model(baseline, device)
    x = prepare_images(torch.randn(args.batch, 3, 256, 256), device)
    gflop = vit_gflops(256, 16, dims["embed_dim"], dims["depth"])

    with torch.inference_mode():
        max_diff = (ours(x) - baseline(x)).abs().max().item()
    runners: dict[str, nn.Module] = {"ours (timm SDPA)": ours, "explicit attn (DINO)": baseline}
    if args.compile:
        runners = {f"{k} +compile": torch.compile(m) for k, m in runners.items()}  # type: ignore[misc]

    precisions = [("fp32", torch.float32)]
    if device.type == "cuda":
        precisions.append(("bf16", torch.bfloat16))
    print(
        f"device={device} ({platform.processor() or platform.machine()}), "
        f"threads={torch.get_num_threads()}, torch={torch.__version__}, model={name}, "
        f"batch={args.batch}, iters={args.iters}, {gflop:.2f} GFLOP/img, "
        f"max|ours-explicit|={max_diff:.2e}"
    )
    header = (
        f"{'model':<28} {'prec':<5} {'img/s':>7} {'median':>7} {'ms/img':>7} {'GFLOP/s':>8} "
        f"{'%peak':>6} {'vs explicit':>11}"
    )
    rows = []
    for label, dtype in precisions:
        peak = matmul_peak_gflops(device, dtype, args.peak_n, reps=5)
        ctx = torch.autocast("cuda", dtype=dtype) if label == "bf16" else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            results = images_per_s(dict(runners), x, args.iters, args.warmup, device)
        peak = max(peak, matmul_peak_gflops(device, dtype, args.peak_n, reps=5))
        rows.append(f"matmul peak {args.peak_n}^3 ({label}): {peak:.1f} GFLOP/s")
        base = list(results.values())[1][0]
        for model_name, (ips, median) in results.items():
            rows.append(
                f"{model_name:<28} {label:<5} {ips:>7.2f} {median:>7.2f} {1000 / ips:>7.1f} "
                f"{ips * gflop:>8.1f} {100 * ips * gflop / peak:>5.1f}% {ips / base:>10.2f}x"
            )
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
