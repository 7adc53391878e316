"""The patch encoder's batch size: capped by a memory budget, chosen by measured throughput.

A ViT's speed per image depends on the batch size differently on every device (on a 2-core CPU
a ViT-S/16 runs at 91 % of the matmul peak at batch 8 and 63 % at batch 256; a GPU wants large
batches), and a foundation model 50x larger than ViT-S needs far less memory per batch to stay
bounded. ``batch_size=auto`` times a few candidate sizes under the memory cap on the device the
stage runs on and keeps the fastest; the result is cached per encoder, input size, device and
precision, so a cohort measures once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hipt.models.patch_vit import feature_width, token_size

log = logging.getLogger(__name__)

#: Candidate batch sizes, smallest first.
CANDIDATES = (8, 16, 32, 64, 128, 256, 512)
#: Share of the estimated encoding time the measurement may take.
CALIBRATION_SHARE = 0.03
#: Batch size when the job is too small to be worth measuring, per device type: a CPU runs
#: ViT-S/16 fastest at small batches (the activations stay in cache: measured 8.3 images/s
#: at 8 vs 4.9 at 32 on 2 cores), a GPU needs large ones to fill its cores.
SMALL_JOB_BATCH = {"cpu": 8, "cuda": 64}
CACHE_ENV = "HIPT_CACHE_DIR"


@dataclass(frozen=True)
class BatchChoice:
    """The batch size and how it was chosen (recorded in the run summary).

    Attributes:
        batch_size: patches per encoder forward.
        memory_cap: the largest batch the memory budget allows.
        how: ``configured``, ``measured``, ``cached`` or ``small job``.
        images_per_s: measured throughput per candidate (``measured`` only).
    """

    batch_size: int
    memory_cap: int
    how: str
    images_per_s: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for ``summary.json``."""
        speeds = {str(k): round(v, 2) for k, v in self.images_per_s.items()}
        return {"batch_size": self.batch_size, "memory_cap": self.memory_cap, "how": self.how,
                "images_per_s": speeds}  # fmt: skip


def bytes_per_image(model: nn.Module, input_px: int, precision: str) -> int:
    """Peak activation bytes of one image in an inference forward (analytic, conservative).

    Counts the widest live tensors of one block (residual, normed input, qkv, the MLP's hidden
    layer) and the attention matrix (as if materialized), plus the input image; ViTs only
    (other models get the ViT-B estimate at their input size).
    """
    base = getattr(model, "_orig_mod", model)
    width = int(getattr(base, "embed_dim", 768) or 768)
    try:
        patch = token_size(base)
    except ValueError:  # not a ViT: count it as 16-px tokens
        patch = 16
    tokens = (input_px // patch) ** 2 + int(getattr(base, "num_prefix_tokens", 1))
    hidden = 4 * width
    for module in base.modules():
        fc1 = getattr(module, "fc1", None)
        if isinstance(fc1, nn.Linear):
            hidden = fc1.out_features
            break
    heads = 1
    for module in base.modules():
        if hasattr(module, "num_heads"):
            heads = int(getattr(module, "num_heads", 1))
            break
    elem = 2 if precision.startswith(("bf16", "16")) else 4
    per_token = 2 * width + 3 * width + hidden + feature_width(base)
    act = tokens * per_token + heads * tokens * tokens
    return int(act * elem + 3 * input_px * input_px * 4)


def memory_cap(model: nn.Module, input_px: int, precision: str, budget_gb: float) -> int:
    """The largest batch whose activations fit ``budget_gb`` (at least 1)."""
    per = bytes_per_image(model, input_px, precision)
    return max(1, int(budget_gb * 2**30 // per))


def _cache_file() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hipt"
    )
    return Path(root) / "batch_size.json"


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, value: dict[str, Any]) -> None:
    path = _cache_file()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache()
        data[key] = value
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)


def device_name(device: torch.device) -> str:
    """What the measurement is valid for: the GPU model, or the CPU with its thread count."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{os.cpu_count()}cores:{torch.get_num_threads()}threads"


def measure(
    forward: Callable[[int], None], sync: Callable[[], None], candidates: list[int],
    per_image_s: float, budget_s: float,
) -> dict[int, float]:  # fmt: skip
    """Images/s of each candidate (ascending) until the time budget is spent or speed drops."""
    speeds: dict[int, float] = {}
    spent = 0.0
    for b in candidates:
        if speeds and spent + 2 * b * per_image_s > budget_s:
            break
        forward(b)  # warm-up at this shape
        sync()
        t0 = time.perf_counter()
        forward(b)
        sync()
        dt = time.perf_counter() - t0
        spent += 2 * dt
        speeds[b] = b / max(dt, 1e-9)
        per_image_s = dt / b
        best = max(speeds.values())
        if speeds[b] < 0.9 * best:  # past the optimum
            break
    return speeds


def choose_batch_size(
    configured: int | str,
    model: nn.Module,
    preprocess: nn.Module,
    key: str,
    device: torch.device,
    precision: str,
    input_px: int,
    patch_px: int,
    budget_gb: float,
    n_patches: int,
) -> BatchChoice:
    """The encoder's batch size for this run.

    Args:
        configured: an integer (used as given, capped by memory) or ``auto``.
        model: the patch encoder, eval mode, on ``device``.
        preprocess: its preprocessing (measured with it: resize and stain are part of the cost).
        key: what identifies the encoder (registry name and input size).
        device: where it runs.
        precision: Lightning precision (``bf16-mixed`` runs under autocast).
        input_px: the encoder's input side.
        patch_px: side of the patches read from slides.
        budget_gb: activation memory budget (``max_batch_mem_gb``).
        n_patches: patches this process will encode (small jobs are not measured).
    """
    cap = memory_cap(model, input_px, precision, budget_gb)
    if str(configured) != "auto":
        size = int(configured)
        if size > cap:
            log.warning("batch_size=%d exceeds the memory budget (%.1f GB allows %d); using %d",
                        size, budget_gb, cap, cap)  # fmt: skip
        return BatchChoice(min(size, cap), cap, "configured", {})
    cache_key = f"{key}|{device_name(device)}|{precision}"
    cached = _read_cache().get(cache_key)
    if isinstance(cached, dict) and isinstance(cached.get("batch_size"), int):
        size = min(int(cached["batch_size"]), cap)
        return BatchChoice(size, cap, "cached", {})
    candidates = [b for b in CANDIDATES if b <= cap] or [cap]
    # measuring the two smallest candidates (twice each) must fit CALIBRATION_SHARE of the job
    if CALIBRATION_SHARE * n_patches < 2 * sum(candidates[:2]):
        size = min(SMALL_JOB_BATCH.get(device.type, 8), cap)
        return BatchChoice(size, cap, "small job", {})
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if precision.startswith("bf16") and device.type == "cuda"
        else torch.autocast(device_type=device.type, dtype=torch.float16)
        if precision.startswith("16") and device.type == "cuda"
        else contextlib.nullcontext()
    )
    pixels = torch.randint(0, 256, (candidates[-1], 3, patch_px, patch_px), dtype=torch.uint8)
    pixels = pixels.to(device)

    def forward(b: int) -> None:
        with torch.inference_mode(), autocast:
            model(preprocess(pixels[:b]))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    forward(1)
    sync()
    per_image = time.perf_counter() - t0
    budget = CALIBRATION_SHARE * per_image * n_patches
    speeds = measure(forward, sync, candidates, per_image, budget)
    best = max(speeds, key=lambda b: speeds[b])
    # near-ties go to the smaller batch (less memory, finer streaming)
    size = min(b for b, v in speeds.items() if v >= 0.97 * speeds[best])
    _write_cache(cache_key, BatchChoice(size, cap, "measured", speeds).to_dict())
    log.info("batch size %d chosen by measured throughput (%s images/s)", size,
             ", ".join(f"{b}: {v:.1f}" for b, v in speeds.items()))  # fmt: skip
    return BatchChoice(size, cap, "measured", speeds)
