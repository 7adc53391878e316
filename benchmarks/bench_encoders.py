"""Patch-encoder cost per architecture family: images/s, peak memory, ratio to HIPT's ViT-S/16.

Usage::

    python benchmarks/bench_encoders.py [--batch 32] [--budget-s 60] [--device auto|cpu|cuda]
        [--only uni,virchow2] [--quick] [--isolation process|inline] [--json out.json]
    make bench-encoders [batch=32 budget_s=60 device=cpu only=uni,virchow2 quick=true]

One row per distinct architecture among the registered patch encoders (models whose published
architectures are identical, e.g. ``lunit_vits8`` and ``kaiko_vits8``, share a row; they differ
only in their normalization constants). Each row runs in a fresh subprocess: 256-px uint8 patches
go through the model's :class:`~hipt.models.preprocess.PatchPreprocess` (resize to its input
side + normalize) and the encoder, under ``torch.inference_mode``; fp32 on CPU, bf16 autocast +
channels-last on CUDA. One warm-up batch, then the best of 2 timed batches.

* **Full or depth-reduced.** A model runs in full when its estimated time for the 2 timed
  batches (analytic FLOPs at the baseline's measured GFLOP/s) is under ``--budget-s``. Otherwise
  the same width runs at depth 0 and at a depth ``k`` whose 2 batches fit half the budget, and
  the full model's time is extrapolated as ``t0 + depth / k * (tk - t0)`` (time per block is
  constant: every block has the same shapes); the row says "extrapolated from depth k".
* **GFLOP/img** is analytic: the matmul FLOPs of the model's layers at its input side (patch
  embedding, qkv/proj, q k^T and attn v, MLP incl. SwiGLU's packed fc1); LayerNorm, softmax,
  activations and the resize are not counted. ``torch.utils.flop_counter.FlopCounterMode`` is
  not used: it misses the fused CPU SDPA kernel (the attention matmuls).
* **Peak memory.** CPU: the worker's ``VmHWM`` minus its RSS after imports (weights, input,
  activations). CUDA: ``torch.cuda.max_memory_allocated``. For a depth-reduced run the missing
  blocks' weights are added (4 bytes/param on CPU; 6 on CUDA: fp32 + autocast's bf16 copy).
* **Params** are the full model's, counted on the meta device (nothing is allocated).
* **vs ViT-S/16** is images/s over ``vit256_small``'s (256 px) in the same run: it runs first
  and again last, the faster run kept (both are printed: a shared machine's speed drifts).
  ``%peak`` is the achieved GFLOP/s over the machine's matmul peak (fp32 4096^3 on CPU, bf16
  8192^3 on CUDA), the best of a measurement before and after the rows.

``--device auto`` runs the CPU table and, when CUDA is usable, a GPU table. ``--quick`` builds
every family at 48-d x 2 blocks and runs the rows in this process (``--isolation inline``; peak
RSS from a reset high-water mark): a smoke run of every code path in well under a minute. The
full run takes about 9 minutes on 2 EPYC cores (each row's plan scales with the measured rate).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench_models import make_style_args, matmul_peak_gflops
from hipt.models import (
    autocast_context,
    available,
    build,
    model_spec,
    prepare_images,
    prepare_model,
)
from hipt.models.patch_vit import feature_width, token_size
from hipt.models.preprocess import PatchPreprocess
from hipt.models.runtime import check_cuda

BASELINE = "vit256_small"
PATCH_PX = 256
WARMUP, ITERS = 1, 2
#: ``--quick``: every family at this width / depth (SwiGLU's hidden width stays even at 48).
QUICK = {"embed_dim": 48, "num_heads": 2, "depth": 2}
#: The first-row estimate before the baseline has a measured rate: this share of the peak.
FIRST_GUESS_SHARE = 0.4
RESULT_TAG = "BENCH_ENCODERS_RESULT "
_FLAGS = frozenset({"quick"})
#: Standard ViT sizes by (width, depth); other shapes are written as ``<width>x<depth>``.
SIZES = {(384, 12): "S", (768, 12): "B", (1024, 24): "L", (1280, 32): "H", (1536, 40): "g"}


# --------------------------------------------------------------------------- the families


@dataclass
class Family:
    """One distinct architecture: the registered names that share it, and what it costs."""

    label: str
    names: list[str]
    input_px: int
    width: int
    depth: int
    params: int
    gflop: float
    published: str = ""


def _meta_model(name: str, overrides: dict[str, Any]) -> nn.Module:
    """The architecture on the meta device (timm's weight init skipped where it takes that)."""
    with torch.device("meta"):
        try:
            return build(name, weight_init="skip", **overrides)
        except TypeError:  # not a timm VisionTransformer factory argument (e.g. Vit256)
            return build(name, **overrides)


def matmul_gflops(model: nn.Module, input_px: int) -> float:
    """Analytic GFLOP (2 x multiply-adds) of one image through a timm ViT's matmuls.

    Patch embedding, every ``nn.Linear`` of the blocks (qkv, proj, MLP / SwiGLU) and the two
    attention products ``q k^T`` and ``attn v`` over all tokens (CLS and register tokens
    included); norms, softmax and activations are not counted.
    """
    vit: Any = model
    patch = token_size(model)
    grid = (input_px // patch) ** 2
    n = grid + int(vit.num_prefix_tokens)
    conv = vit.patch_embed.proj
    flops = 2 * grid * conv.weight[0].numel() * conv.out_channels
    for block in vit.blocks:
        for mod in block.modules():
            if isinstance(mod, nn.Linear):
                flops += 2 * n * mod.in_features * mod.out_features
        attn = block.attn
        flops += 2 * 2 * n * n * attn.num_heads * attn.head_dim
    return flops / 1e9


def _signature(model: nn.Module, input_px: int) -> tuple[Any, ...]:
    vit: Any = model
    block = vit.blocks[0]
    return (
        input_px,
        token_size(model),
        vit.embed_dim,
        len(vit.blocks),
        block.attn.num_heads,
        vit.num_prefix_tokens,
        type(block.mlp).__name__,
        tuple(block.mlp.fc1.weight.shape),
        type(block.ls1).__name__,
        feature_width(model),
    )


def _label(model: nn.Module) -> str:
    vit: Any = model
    dim, depth = int(vit.embed_dim), len(vit.blocks)
    text = f"ViT-{SIZES.get((dim, depth), f'{dim}x{depth}')}/{token_size(model)}"
    regs = int(getattr(vit, "num_reg_tokens", 0))
    if regs:
        text += f"-reg{regs}"
    if type(vit.blocks[0].mlp).__name__ == "GluMlp":
        text += " SwiGLU"
    if getattr(vit, "embedding", "cls") == "cls+mean":
        text += " CLS+mean"
    return text


def families(only: list[str] | None = None, quick: bool = False) -> list[Family]:
    """The registered patch encoders grouped by architecture, the baseline first.

    Args:
        only: keep the families of these names (and only these names in them); the baseline is
            always kept.
        quick: params / GFLOP / depth of the ``QUICK`` variants that ``--quick`` runs.

    Raises:
        SystemExit: an ``only`` name is not a registered patch encoder.
    """
    names = [n for n in available("patch_encoder") if not n.endswith("_test")]
    if only:
        unknown = sorted(set(only) - set(available("patch_encoder")))
        if unknown:
            raise SystemExit(f"--only: unknown patch encoder(s) {unknown}; known: {names}")
        names = [n for n in available("patch_encoder") if n in only or n == BASELINE]
    groups: dict[tuple[Any, ...], Family] = {}
    for name in sorted(names, key=lambda n: n != BASELINE):
        spec = model_spec(name)
        pre = spec.preprocessing
        assert pre is not None  # patch encoders declare it
        px = pre.input_px if pre.resize else PATCH_PX
        full = _meta_model(name, {})
        key = _signature(full, px)
        if key in groups:
            groups[key].names.append(name)
            continue
        run = _meta_model(name, QUICK) if quick else full
        groups[key] = Family(
            label=_label(full) + (" (quick: 48-d x2)" if quick else ""),
            names=[name],
            input_px=px,
            width=feature_width(run),
            depth=len(getattr(run, "blocks")),  # noqa: B009
            params=sum(p.numel() for p in run.parameters()),
            gflop=matmul_gflops(run, px),
            published=spec.source.params if spec.source is not None else "",
        )
    return sorted(groups.values(), key=lambda f: (f.names[0] != BASELINE, f.params, f.gflop))


# --------------------------------------------------------------------------- one worker


def _status_mb(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (0 where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_rss() -> None:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0; best effort)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Time ``job["name"]`` at each of ``job["depths"]`` in this (fresh) process.

    Returns:
        ``{"seconds": {depth: best s per batch}, "params": {depth: n}, "cpu_peak_mb",
        "cuda_peak_mb": {depth: MiB}}``.
    """
    gc.collect()
    _reset_peak_rss()  # a no-op in a fresh worker; makes inline (--quick) rows comparable
    base_rss = _status_mb("VmRSS")
    device = torch.device(job["device"])
    torch.manual_seed(0)
    pre_spec = model_spec(job["name"]).preprocessing
    assert pre_spec is not None
    pre = PatchPreprocess(pre_spec)
    patches = torch.randint(0, 256, (job["batch"], 3, PATCH_PX, PATCH_PX), dtype=torch.uint8)
    patches = patches.to(device)
    out: dict[str, Any] = {"seconds": {}, "params": {}, "cuda_peak_mb": {}}
    for depth in job["depths"]:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        model = build(job["name"], **{**job["overrides"], "depth": depth}).eval()
        model = prepare_model(model, device)
        times = []
        with torch.inference_mode():
            for i in range(WARMUP + ITERS):
                _sync(device)
                start = time.perf_counter()
                x = prepare_images(pre(patches), device)
                with autocast_context(device):
                    model(x)
                _sync(device)
                if i >= WARMUP:
                    times.append(time.perf_counter() - start)
        out["seconds"][depth] = min(times)
        out["params"][depth] = sum(p.numel() for p in model.parameters())
        if device.type == "cuda":
            out["cuda_peak_mb"][depth] = torch.cuda.max_memory_allocated(device) / 2**20
        del model, x
    out["cpu_peak_mb"] = _status_mb("VmHWM") - base_rss
    return out


def run_worker(job: dict[str, Any], timeout_s: float, inline: bool = False) -> dict[str, Any]:
    """Run :func:`worker` in a fresh interpreter (its own peak RSS); ``{"error": ...}`` on failure.

    ``inline`` runs it in this process instead (``--quick``: no 5-10 s interpreter start-up).
    """
    if inline:
        try:
            return worker(job)
        except Exception as exc:  # noqa: BLE001 (a failed row is reported, the others run)
            return {"error": f"{type(exc).__name__}: {exc}"[:200]}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG) :])
            for key in ("seconds", "params", "cuda_peak_mb"):
                result[key] = {int(k): v for k, v in result[key].items()}
            return result
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:200]}"}


# --------------------------------------------------------------------------- the table


@dataclass
class Row:
    """One family's measurement on one device."""

    family: str
    models: str
    input_px: int
    width: int
    params_m: float
    published: str
    gflop: float
    images_s: float | None = None
    gflops_s: float | None = None
    peak_share: float | None = None
    peak_mb: float | None = None
    vs_baseline: float | None = None
    measured_depth: int | None = None
    seconds: float = 0.0
    note: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


def plan_depths(fam: Family, est_s: float, budget_s: float) -> list[int]:
    """``[depth]`` when the 2 timed batches fit ``budget_s``, else ``[0, k]`` fitting half of it."""
    if est_s <= budget_s or fam.depth <= 1:
        return [fam.depth]
    k = int(fam.depth * 0.5 * budget_s / est_s)
    return [0, max(1, min(fam.depth - 1, k))]


def measure(
    fam: Family,
    device: torch.device,
    batch: int,
    depths: list[int],
    overrides: dict[str, Any],
    peak: float,
    timeout_s: float,
    inline: bool = False,
) -> Row:
    """Run one family's worker and turn its times into a row (extrapolated when reduced)."""
    row = Row(
        family=fam.label,
        models=", ".join(fam.names),
        input_px=fam.input_px,
        width=fam.width,
        params_m=fam.params / 1e6,
        published=fam.published,
        gflop=fam.gflop,
    )
    job = {
        "name": fam.names[0],
        "device": str(device),
        "batch": batch,
        "depths": depths,
        "overrides": overrides,
    }
    start = time.perf_counter()
    result = run_worker(job, timeout_s, inline)
    row.seconds = time.perf_counter() - start
    row.raw = result
    if "error" in result:
        row.note = f"failed: {result['error']}"
        return row
    secs = result["seconds"]
    weight_bytes = 6 if device.type == "cuda" else 4
    if len(depths) == 1:
        t = secs[fam.depth]
        mem = result["cuda_peak_mb"][fam.depth] if device.type == "cuda" else None
    else:
        k = depths[1]
        row.measured_depth = k
        t = secs[0] + fam.depth / k * (secs[k] - secs[0])
        mem = result["cuda_peak_mb"][k] if device.type == "cuda" else None
        row.note = f"extrapolated from depth {k}"
    if mem is None:
        mem = result["cpu_peak_mb"]
    missing = fam.params - result["params"][depths[-1]]
    row.peak_mb = mem + weight_bytes * missing / 2**20
    row.images_s = batch / t
    row.gflops_s = row.images_s * fam.gflop
    row.peak_share = row.gflops_s / peak
    return row


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table(rows: list[Row]) -> str:
    """Markdown table of the rows."""
    head = (
        "| family | models | px | width | params (pub.) | GFLOP/img | img/s | ms/img | GFLOP/s "
        "| %peak | peak mem | vs ViT-S/16 | note |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        params = f"{r.params_m:.1f}M" + (f" ({r.published})" if r.published else "")
        ms = None if not r.images_s else 1000 / r.images_s
        mem = None if r.peak_mb is None else r.peak_mb / 1024
        lines.append(
            f"| {r.family} | {r.models} | {r.input_px} | {r.width} | {params} | {r.gflop:.2f} "
            f"| {_fmt(r.images_s, '.2f')} | {_fmt(ms, '.1f')} | {_fmt(r.gflops_s, '.1f')} "
            f"| {_fmt(None if r.peak_share is None else 100 * r.peak_share, '.1f', '%')} "
            f"| {_fmt(mem, '.2f', ' GiB')} | {_fmt(r.vs_baseline, '.2f', 'x')} | {r.note} |"
        )
    return "\n".join(lines)


def bench_device(
    device: torch.device, fams: list[Family], args: argparse.Namespace, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Every family on ``device``: the matmul peak, then one worker per family."""
    cuda = device.type == "cuda"
    dtype, prec = (torch.bfloat16, "bf16") if cuda else (torch.float32, "fp32")
    peak_n = 8192 if cuda else (1024 if args.quick else 4096)
    reps = 10 if cuda else 5
    peak = matmul_peak_gflops(device, dtype, peak_n, reps)
    if cuda:
        torch.cuda.empty_cache()
    inline = args.isolation == "inline" or (args.isolation is None and args.quick)
    rate: float | None = None  # the baseline's achieved GFLOP/s
    rows: list[Row] = []
    plans: list[tuple[list[int], float]] = []

    def run(i: int) -> Row:
        depths, timeout = plans[i]
        row = measure(fams[i], device, args.batch, depths, overrides, peak, timeout, inline)
        print(
            f"[{device.type} {i + 1}/{len(fams)}] {fams[i].label}: "
            f"{_fmt(row.images_s, '.2f')} img/s, depths {depths}, {row.seconds:.0f} s {row.note}",
            file=sys.stderr,
            flush=True,
        )
        return row

    for i, fam in enumerate(fams):
        guess = rate or FIRST_GUESS_SHARE * peak
        est = ITERS * args.batch * fam.gflop / guess
        depths = plan_depths(fam, est, args.budget_s)
        # generous: warm-up + timed batches at the planned depth, start-up and model build
        plans.append((depths, max(300.0, 10 * (WARMUP + ITERS) * est * depths[-1] / fam.depth)))
        rows.append(run(i))
        if fam.names[0] == BASELINE and rows[-1].gflops_s:
            rate = rows[-1].gflops_s
    # the baseline again after the others, the faster run kept: a shared machine's speed drifts
    # and the ratios should not carry the drift of one moment (both runs are in the JSON)
    baseline_runs: list[float | None] = []
    if len(fams) > 1 and fams[0].names[0] == BASELINE:
        again = run(0)
        baseline_runs = [rows[0].images_s, again.images_s]
        if again.images_s and (not rows[0].images_s or again.images_s > rows[0].images_s):
            rows[0] = again
    # the peak again after the rows (best of both: a shared machine's speed drifts)
    peak = max(peak, matmul_peak_gflops(device, dtype, peak_n, reps))
    for row in rows:
        if row.gflops_s is not None:
            row.peak_share = row.gflops_s / peak
    base = next((r.images_s for r in rows if r.models.split(", ")[0] == BASELINE), None)
    for row in rows:
        if base and row.images_s:
            row.vs_baseline = row.images_s / base
    if cuda:
        what = f"{torch.cuda.get_device_name(device)}, bf16 autocast + channels-last"
    else:
        what = f"{_cpu_name()}, {torch.get_num_threads()} threads, fp32"
    return {
        "device": str(device),
        "what": what,
        "precision": prec,
        "peak_gflops": peak,
        "peak_n": peak_n,
        "baseline_runs": baseline_runs,
        "rows": rows,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def devices_for(choice: str) -> list[torch.device]:
    """``auto``: CPU, plus CUDA when usable; ``cpu`` / ``cuda``: that one."""
    if choice == "auto":
        check_cuda("auto")
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    check_cuda(choice)
    return [torch.device(choice)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command line (``--key value`` or make-style ``key=value``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="patches per forward call")
    parser.add_argument(
        "--budget-s", type=float, default=60.0, help="per model: longest 2 timed batches in full"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--only", default="", help="comma-separated names (baseline kept)")
    parser.add_argument("--quick", action="store_true", help="48-d x 2-block variants (smoke)")
    parser.add_argument(
        "--isolation",
        choices=["process", "inline"],
        default=None,
        help="a fresh process per row (default) or all in this one (default with --quick)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return parser.parse_args(make_style_args(argv, _FLAGS))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table(s); returns the report (as written by ``--json``)."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()] or None
    fams = families(only, quick=args.quick)
    overrides = dict(QUICK) if args.quick else {}
    overrides.pop("depth", None)  # the worker sets the depth it runs
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "batch": args.batch,
        "budget_s": args.budget_s,
        "quick": args.quick,
        "tables": [],
    }
    for device in devices_for(args.device):
        result = bench_device(device, fams, args, overrides)
        print(
            f"\n## {result['device']} ({result['what']}), torch {torch.__version__}, "
            f"batch {args.batch}, budget {args.budget_s:g} s/model"
        )
        runs = " / ".join(_fmt(v, ".2f") for v in result["baseline_runs"])
        print(
            f"matmul peak {result['peak_n']}^3 ({result['precision']}): "
            f"{result['peak_gflops']:.1f} GFLOP/s"
            + (f"; {BASELINE} img/s first / last run: {runs} (the faster kept)" if runs else "")
            + "\n"
        )
        print(table(result["rows"]))
        print(
            "\nGFLOP/img: analytic matmul FLOPs at the model's input px (FlopCounterMode misses "
            "CPU SDPA); %peak = GFLOP/s / matmul peak; peak mem: "
            + ("max_memory_allocated" if device.type == "cuda" else "VmHWM - RSS after imports")
            + "; extrapolated rows: t0 + depth/k (tk - t0), plus the missing blocks' weights."
        )
        result["rows"] = [
            {k: v for k, v in asdict(r).items() if k != "raw"} | {"raw": r.raw}
            for r in result["rows"]
        ]
        report["tables"].append(result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        print(RESULT_TAG + json.dumps(worker(json.loads(sys.argv[2]))), flush=True)
    else:
        main()
