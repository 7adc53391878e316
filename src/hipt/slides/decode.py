"""Where slide tiles are decoded when the encoder runs on a GPU: on CPU cores or on the GPU.

``cpu``: worker processes decode JPEG tiles with libjpeg-turbo (cuCIM or OpenSlide), batches go
to the GPU from pinned memory with non-blocking copies. ``gpu_batch``: cuCIM's batch loader
decodes many regions per call on the GPU (nvJPEG; with the nvImageCodec plugin ``cuslide2``
where it is installed) straight into GPU memory. cuCIM's single-region ``device="cuda"`` read is
not offered: it decodes on one CPU core, then copies, and frees with a device-wide sync.

``auto`` is ``cpu``: the measured-fastest path until ``make gpu-check`` on a GPU machine shows a
GPU path winning (its report names the default to set here, :data:`AUTO`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

from hipt.errors import ConfigError

DECODES = ("auto", "cpu", "gpu_batch")
#: What ``decode=auto`` means; set from the ``make gpu-check`` report (none has run yet).
AUTO = "cpu"
#: cuCIM reads this at import to load the nvImageCodec-based ``cuslide2`` plugin.
CUSLIDE2_ENV = "ENABLE_CUSLIDE2"


@dataclasses.dataclass(frozen=True)
class DecodePlan:
    """The decode path a run uses, and why (recorded in the run summary and the stores).

    Attributes:
        mode: ``cpu`` or ``gpu_batch``.
        plugin: cuCIM plugin for ``gpu_batch`` (``cuslide`` or ``cuslide2``), else ``None``.
        reason: one line: why this path.
    """

    mode: str
    plugin: str | None
    reason: str

    def to_dict(self) -> dict[str, str | None]:
        """Plain dict for summaries."""
        return dataclasses.asdict(self)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def resolve_decode(requested: str, device_type: str, backend: str = "auto") -> DecodePlan:
    """Turn ``decode=auto|cpu|gpu_batch`` into the path this run takes.

    Args:
        requested: the setting.
        device_type: where the encoders run (``cuda`` or ``cpu``).
        backend: the slide reader setting (GPU decoding needs cuCIM).

    Raises:
        ConfigError: ``gpu_batch`` asked for where it cannot run (unknown value, the OpenSlide
            backend, or cuCIM's CUDA dependencies missing on a CUDA machine).
    """
    if requested not in DECODES:
        raise ConfigError(f"decode must be one of {', '.join(DECODES)}, got '{requested}'")
    mode = AUTO if requested == "auto" else requested
    if mode == "cpu":
        why = "asked for" if requested == "cpu" else "the measured default (make gpu-check)"
        return DecodePlan("cpu", None, f"CPU decode in worker processes: {why}")
    if device_type != "cuda":
        return DecodePlan("cpu", None, "decode=gpu_batch needs CUDA; decoding on CPU")
    if backend == "openslide":
        raise ConfigError("decode=gpu_batch needs the cuCIM backend, not backend=openslide")
    if not _installed("cupy"):
        raise ConfigError(
            "decode=gpu_batch needs cuCIM's CUDA dependencies (cupy, nvImageCodec): run "
            "`make setup-gpu`, or use decode=cpu"
        )
    wanted = os.environ.get(CUSLIDE2_ENV, "1") != "0"  # ENABLE_CUSLIDE2=0 keeps cuslide
    plugin = "cuslide2" if wanted and _installed("nvidia.nvimgcodec") else "cuslide"
    if plugin == "cuslide2":
        os.environ.setdefault(CUSLIDE2_ENV, "1")  # read when cuCIM is first imported
    return DecodePlan("gpu_batch", plugin, f"GPU batch decode with cuCIM's {plugin}: asked for")
