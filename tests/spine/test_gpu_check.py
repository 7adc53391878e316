"""`make gpu-check`'s logic, proven on CPU: the decode default it recommends, its report, and
the one-line refusal without CUDA (the full dry run is `make gpu-check dry_run=1`, ~30 s)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gpu_check  # noqa: E402


def _rows(cpu: float, gpu: float) -> list[dict]:
    base = {"wall_s": 1.0, "peak_gpu_memory_gb": 1.0, "cosine_vs_cpu": 1.0}
    return [{"path": "cpu", "regions_per_s": cpu, **base},
            {"path": "gpu_batch (cuslide2)", "regions_per_s": gpu, **base}]  # fmt: skip


def test_a_gpu_path_becomes_the_default_only_when_clearly_faster():
    assert gpu_check.choose(_rows(10.0, 10.5))["default"] == "cpu"  # within 10 %
    won = gpu_check.choose(_rows(10.0, 13.0))
    assert won["default"] == "gpu_batch" and 'AUTO = "gpu_batch"' in won["text"]


def test_report_states_the_compute_floor_share():
    floor = {"regions": 16, "models": "vit256_small + vit4k_xs", "flops_per_region": 3.0e12,
             "dtype": "bfloat16", "peak_tflops": 600.0}  # fmt: skip
    tests = {"exit_code": 0, "counts": {"passed": 12}, "failed": [], "seconds": 90.0}
    text = gpu_check.report({"gpus": ["H100"]}, tests, _rows(20.0, 100.0), floor,
                            gpu_check.choose(_rows(20.0, 100.0)), False, 300.0)  # fmt: skip
    assert "| gpu_batch (cuslide2) | 100.0 | 50% |" in text  # 100 regions/s * 3 TFLOP / 600
    assert "DRY RUN" not in text and "exit code 0" in text


def test_the_encoders_flops_per_region():
    """ViT-S/16 at 256 px: 12.28 GFLOP per patch, 3,144 GFLOP for 256 patches (the figure
    bench-extract reports); the ViT-4K XS adds about 0.3 % (6 blocks of 192-d on 257 tokens)."""
    vit256 = gpu_check.flops_per_region("vit256_small", "vit4k_xs")
    assert 3.144e12 < vit256 < 3.144e12 * 1.01, vit256


def test_without_cuda_it_refuses_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is usable here")
    assert gpu_check.main([]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch cannot use CUDA here" in err[0]
