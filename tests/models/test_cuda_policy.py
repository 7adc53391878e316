"""The GPU policy, proven without a GPU: driver check, TF32, worker start, wrong-device tensors.

A too-old driver under torch's CUDA 13 build is simulated by a fake ``/proc`` driver file and
``torch.cuda.is_available() == False``; models are run on the ``meta`` device, where any
tensor a forward pass creates on another device (``torch.arange(n)`` without ``device=``)
fails loudly instead of silently syncing or crashing only on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hipt.errors import HiptError
from hipt.finetune.slide_model import fit_scaler
from hipt.models import available, build, model_spec, runtime

DRIVER_FILE = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 2023\n"


@pytest.fixture
def old_driver(tmp_path, monkeypatch):
    """A machine with an R535 driver where this torch (CUDA 13 build) sees no device."""
    proc = tmp_path / "version"
    proc.write_text(DRIVER_FILE)
    monkeypatch.setattr(runtime, "NVIDIA_PROC", proc)
    monkeypatch.setattr(runtime, "nvidia_driver", lambda p=proc: "535.104.05")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")


def test_driver_version_is_read_from_proc(tmp_path):
    proc = tmp_path / "version"
    proc.write_text(DRIVER_FILE)
    assert runtime.nvidia_driver(proc) == "535.104.05"
    assert runtime.nvidia_driver(tmp_path / "absent") is None


def test_a_gpu_torch_cannot_use_stops_every_stage_in_one_line(old_driver):
    """With a driver present, 'auto' no longer silently means CPU: one line names the driver
    and what this torch needs; accelerator=cpu still runs."""
    calls = (lambda: runtime.check_cuda("auto"), lambda: runtime.resolve_device("auto"),
             lambda: runtime.resolve_precision("auto", "auto"))  # fmt: skip
    for call in calls:
        with pytest.raises(HiptError) as err:
            call()
        msg = str(err.value)
        assert "driver 535.104.05" in msg and "driver >= 580" in msg and "\n" not in msg
    runtime.check_cuda("cpu")
    assert runtime.resolve_device("cpu").type == "cpu"


def test_no_driver_means_cpu_for_auto_and_an_error_for_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "nvidia_driver", lambda p=None: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto").type == "cpu"
    with pytest.raises(HiptError, match="no CUDA device"):
        runtime.check_cuda("gpu")


def test_tf32_is_set_on_cuda_only():
    """CPU runs stay IEEE (torch's 'high' would also allow reduced-precision CPU kernels)."""
    before = torch.get_float32_matmul_precision()
    try:
        assert runtime.set_fp32_matmul("cpu", True) == "ieee"
        assert torch.get_float32_matmul_precision() == before
        assert runtime.set_fp32_matmul(torch.device("cuda"), True) == "tf32"
        assert torch.get_float32_matmul_precision() == "high"
        assert runtime.set_fp32_matmul("cuda", False) == "ieee"
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)


def test_worker_start_method():
    assert runtime.worker_start_method("cuda:0", 2) == "forkserver"
    assert runtime.worker_start_method("cuda:0", 0) is None
    assert runtime.worker_start_method("cpu", 4) is None


def _meta_input(name: str, model: nn.Module) -> torch.Tensor:
    spec = model_spec(name)
    if spec.kind == "patch_encoder":
        px = spec.preprocessing.input_px if spec.preprocessing else 256
        return torch.empty(2, 3, px, px, device="meta")
    if spec.kind == "region_encoder":
        return torch.empty(2, int(model.input_dim), 16, 16, device="meta")
    if hasattr(model, "input_width"):  # hipt_lgp: a feats256 bag through its own ViT-4K
        return torch.empty(3, 256, model.input_width("feats256"), device="meta")
    return torch.empty(3, 256, int(model.input_dim), device="meta")


@pytest.mark.parametrize("name", [n for n in available() if n.endswith("_tiny_test")])
def test_forward_passes_create_no_tensor_on_another_device(name):
    """Every registered (tiny) model runs forward with weights and input on ``meta``: a
    tensor created inside without ``device=`` (on CPU) would raise a device mismatch."""
    with torch.device("meta"):
        model = build(name)
    x = _meta_input(name, model)
    with torch.no_grad():
        out = model.eval()(x)
    outs = out if isinstance(out, (tuple, list)) else [out]
    assert all(o.device.type == "meta" for o in outs if isinstance(o, torch.Tensor))


class _Scaler:
    count = 2

    def fit(self, rows):
        for _ in rows:
            pass


class _Recorder(nn.Module):
    """A slide head stand-in: records where it and its input are when the scaler is fitted."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[str, str]] = []
        self.scaler = _Scaler()

    def scaler_inputs(self, bag: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.w.device.type, bag.device.type))
        return bag


def test_scaler_fit_runs_on_the_training_device():
    """The model moves before the scaler is fitted (on a GPU run the ViT-4K pass is there)."""
    model = _Recorder()
    fit_scaler(model, [torch.zeros(2, 4), torch.zeros(1, 4)], device="meta")
    assert model.seen == [("meta", "meta"), ("meta", "meta")]


def test_blank_patch_feature_is_computed_in_the_trainers_precision_context():
    """The skip_background fill goes through the same autocast as the tissue patches."""
    from contextlib import contextmanager

    from hipt.extract.encoder import RegionEncoder
    from hipt.extract.module import ExtractModule

    entered = []

    @contextmanager
    def forward_context():
        entered.append("in")
        yield
        entered.append("out")

    enc = RegionEncoder(build("vit256_tiny_test"), build("vit4k_tiny_test"))
    calls = []
    original = enc.blank_feature

    def blank(*a, **k):
        calls.append(list(entered))
        return original(*a, **k)

    enc.blank_feature = blank  # type: ignore[method-assign]
    module = ExtractModule(enc, skip_background=True, patch_px=256)
    fake = type(
        "T",
        (),
        {"precision_plugin": type("P", (), {"forward_context": staticmethod(forward_context)})()},
    )()  # noqa: E501
    module._trainer = fake  # type: ignore[assignment]
    module.on_predict_start()
    assert calls == [["in"]] and entered == ["in", "out"]


def test_readme_states_the_cuda_12_alternative():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "cucim-cu12" in readme and "HIPT_REQUIRE_CUDA" in readme


def test_required_cuda_fails_the_gpu_tests_instead_of_skipping(tmp_path):
    """`make test-gpu` sets HIPT_REQUIRE_CUDA=1: on a machine where torch has no CUDA, the run
    fails with one line instead of passing with every GPU test skipped."""
    import os
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("CUDA is usable here: the gpu tests would run")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HIPT_REQUIRE_CUDA": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/models/test_runtime.py"]
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "HIPT_REQUIRE_CUDA=1 but torch cannot use CUDA" in res.stdout + res.stderr
    env.pop("HIPT_REQUIRE_CUDA")
    plain = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and "skipped" in plain.stdout
