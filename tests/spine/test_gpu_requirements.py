"""`make setup-gpu` installs what cuCIM needs for GPU decoding, pinned, for torch's CUDA build.

Checked against the installed cucim-cu13's own declared dependencies (its wheel METADATA), so
a pin that no longer satisfies cuCIM, a missing nvJPEG extra, or a CUDA-major mismatch with
torch fails here, on CPU, before anyone runs it on a GPU.
"""

from __future__ import annotations

import re
from importlib.metadata import requires, version
from pathlib import Path

import torch
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _pins(name: str) -> dict[str, Requirement]:
    lines = (ROOT / "requirements" / name).read_text().splitlines()
    reqs = [Requirement(ln.split("#")[0].strip()) for ln in lines if ln.split("#")[0].strip()]
    return {r.name.lower(): r for r in reqs}


def test_gpu_pins_satisfy_cucims_declared_dependencies():
    pins = _pins("gpu-cu13.txt")
    assert all(str(r.specifier).startswith("==") for r in pins.values()), pins  # exact pins
    for dep in map(Requirement, requires("cucim-cu13") or []):
        if dep.marker is not None:  # extras (test, docs, ...) are not runtime needs
            continue
        name = dep.name.lower()
        if name in ("click", "lazy-loader", "numpy", "scipy"):  # installed by `make setup`
            assert dep.specifier.contains(version(name)), f"installed {name} fails {dep}"
            continue
        assert name in pins, f"cucim-cu13 needs {dep}; requirements/gpu-cu13.txt lacks it"
        pinned = next(iter(pins[name].specifier)).version
        assert dep.specifier.contains(pinned), f"{name}=={pinned} does not satisfy {dep}"
        assert dep.extras <= pins[name].extras, f"{name} needs extras {dep.extras}"
    assert "nvjpeg" in pins["nvidia-nvimgcodec-cu13"].extras  # the GPU JPEG decoder itself


def test_gpu_packages_match_torchs_cuda_major():
    major = str(torch.version.cuda or "13").split(".")[0]
    for name in _pins("gpu-cu13.txt"):
        found = re.search(r"cu(?:da)?(\d+)", name)
        if found:
            assert found.group(1).startswith(major), f"{name} is not for CUDA {major}"
    assert version("cucim-cu13")  # the reader `make setup` installs is the CUDA 13 one


def test_setup_gpu_installs_the_pins_with_the_constraints_and_no_unpinned_fallback():
    make = (ROOT / "Makefile").read_text()
    recipe = make.split("\nsetup-gpu:", 1)[1].split("\n\n", 1)[0]
    assert "-c $(CONSTRAINTS) -r requirements/gpu-cu13.txt" in recipe
    assert "||" not in recipe and '[ctk]"' not in recipe
