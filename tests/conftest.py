"""Suite-wide test setup: offline W&B, CPU determinism, and the `gpu` marker's skip rule."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Measured batch sizes are cached per machine; tests start from an empty cache of their own.
if "HIPT_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["HIPT_CACHE_DIR"] = tempfile.mkdtemp(prefix="hipt-test-cache-")


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per test process: tiny models run faster without the two cores
    fighting, and results do not depend on the machine's load."""
    import torch

    torch.set_num_threads(1)


#: Set by `make test-gpu` / `make gpu-check`: GPU tests must run, so no CUDA is a failure.
REQUIRE_CUDA = "HIPT_REQUIRE_CUDA"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests cleanly when CUDA is not available, unless HIPT_REQUIRE_CUDA=1."""
    import torch

    if torch.cuda.is_available():
        return
    if os.environ.get(REQUIRE_CUDA) == "1" and any("gpu" in item.keywords for item in items):
        from hipt.models.runtime import nvidia_driver

        driver = nvidia_driver()
        why = (
            f"NVIDIA driver {driver} is too old for torch's CUDA {torch.version.cuda} build"
            if driver
            else "no NVIDIA driver is loaded"
        )  # noqa: E501
        raise pytest.UsageError(
            f"{REQUIRE_CUDA}=1 but torch cannot use CUDA ({why}): the gpu tests cannot run"
        )  # noqa: E501
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
