"""Device placement and precision policy: fp32 on CPU, bf16 autocast + channels-last on CUDA."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hipt.errors import HiptError

__all__ = [
    "autocast_context",
    "check_cuda",
    "describe_device",
    "nvidia_driver",
    "prepare_images",
    "prepare_model",
    "resolve_device",
    "resolve_precision",
    "set_fp32_matmul",
    "uses_cuda",
    "worker_start_method",
]

#: Where the NVIDIA kernel module says which driver is loaded (present with a GPU and driver).
NVIDIA_PROC = Path("/proc/driver/nvidia/version")
#: Oldest Linux driver each CUDA major release of torch's wheels runs on (CUDA's minor-version
#: compatibility: any driver of the major's first release).
MIN_DRIVER = {13: 580, 12: 525, 11: 450}


def nvidia_driver(proc: Path = NVIDIA_PROC) -> str | None:
    """The loaded NVIDIA driver version (``"535.104.05"``), or None without one."""
    try:
        text = proc.read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?(\d+\.\d+(?:\.\d+)?)", text)
    return found.group(1) if found else "unknown"


def check_cuda(accelerator: str, driver: str | None = None) -> None:
    """Stop, in one line, when a GPU is asked for or present but torch cannot use it.

    ``accelerator=cpu`` never stops. Otherwise, when torch sees no CUDA device: with an NVIDIA
    driver loaded (a GPU is there, e.g. an R535 driver under torch's CUDA 13 build) the run
    stops naming the driver requirement, instead of silently running everything on CPU;
    without one, ``auto`` runs on CPU and ``gpu``/``cuda`` stops.

    Raises:
        HiptError: a GPU cannot be used although it is there or asked for.
    """
    acc = str(accelerator).lower()
    if acc == "cpu" or torch.cuda.is_available():
        return
    driver = driver if driver is not None else nvidia_driver()
    cuda = torch.version.cuda
    if driver is not None:
        major = int(str(cuda).split(".")[0]) if cuda else None
        need = MIN_DRIVER.get(major or 0)
        want = f"CUDA {cuda} needs driver >= {need}" if need else "it is a CPU-only build"
        raise HiptError(
            f"an NVIDIA GPU is present (driver {driver}) but torch {torch.__version__} cannot use "
            f"it ({want}); update the driver, install the CUDA 12 build (README: GPU), or pass "
            "accelerator=cpu to run on CPU"
        )
    if acc == "gpu" or acc.startswith("cuda"):
        raise HiptError(
            f"accelerator={accelerator} but torch sees no CUDA device (no NVIDIA driver loaded); "
            "use accelerator=auto or cpu on this machine"
        )


def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning will run on CUDA for this ``accelerator`` setting."""
    acc = str(accelerator).lower()
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


def resolve_device(accelerator: str) -> torch.device:
    """The device of a single-process stage: ``auto`` is CUDA when usable; checks first.

    Raises:
        HiptError: see :func:`check_cuda`.
    """
    check_cuda(accelerator)
    acc = str(accelerator).lower()
    if acc == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if acc in ("gpu", "cuda") else acc)


def set_fp32_matmul(device: torch.device | str, tf32: bool = True) -> str:
    """Let float32 matmuls and convolutions use TF32 on CUDA (``tf32``); CPU stays exact.

    TF32 keeps float32's range with a 10-bit mantissa in the tensor cores (Ampere and later):
    several times faster fp32 matmuls (finetune, the frozen ViT-4K pass, ``32-true`` runs).
    ``tf32=false`` keeps IEEE float32 for bit-fidelity. On CPU nothing is changed (torch's
    ``high`` setting would also allow reduced-precision CPU kernels where a CPU has them).

    Returns:
        What float32 matmuls on ``device`` use now: ``"tf32"`` or ``"ieee"`` (recorded).
    """
    if torch.device(device).type != "cuda":
        return "ieee"
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    return "tf32" if tf32 else "ieee"


def describe_device(device: torch.device | str, precision: str, fp32_matmul: str) -> str:
    """One log line's worth: ``cuda:0 (NVIDIA H100, driver 580.65), bf16-mixed, fp32 tf32``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        what = f"{dev} ({name}, driver {nvidia_driver() or '?'}, CUDA {torch.version.cuda})"
    else:
        what = f"cpu ({torch.get_num_threads()} threads)"
    return f"device {what}, precision {precision}, fp32 matmul {fp32_matmul}"


def resolve_precision(precision: str, accelerator: str) -> str:
    """The Lightning precision a stage runs at: the one policy of every stage.

    ``auto`` is ``bf16-mixed`` on CUDA and ``32-true`` on CPU (bf16 has no fast path on this
    kind of CPU: ~7.5x slower); ``32`` is spelled ``32-true``; anything else as given.
    """
    check_cuda(accelerator)
    if precision == "auto":
        return "bf16-mixed" if uses_cuda(accelerator) else "32-true"
    return "32-true" if str(precision) == "32" else str(precision)


def autocast_context(device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; a no-op on CPU (bf16 has no fast path there, ~7.5x slower)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move ``model`` to ``device``; channels-last weights on CUDA (for the patch-embed conv)."""
    dev = torch.device(device)
    model = model.to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def prepare_images(x: Tensor, device: torch.device | str) -> Tensor:
    """Move an image batch ``[B, 3, H, W]`` to ``device``, channels-last on CUDA."""
    dev = torch.device(device)
    x = x.to(dev, non_blocking=True)
    if dev.type == "cuda" and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def worker_start_method(device: torch.device | str, num_workers: int) -> str | None:
    """How DataLoader workers start: ``forkserver`` beside CUDA, the default (fork) otherwise.

    A process that runs on CUDA has initialised it before its loaders start workers, and a
    forked child inherits that state: CUDA, and cuCIM's cuFile layer that the child would load
    when it first opens a slide, are not fork-safe. ``forkserver`` workers start from a clean
    server process (a few seconds once per loader) and import cuCIM themselves. CPU runs keep
    ``fork``, which starts instantly.

    Returns:
        ``"forkserver"``, or ``None`` for the platform default.
    """
    if num_workers > 0 and torch.device(device).type == "cuda":
        return "forkserver"
    return None
