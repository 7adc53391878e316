"""Helpers of the robustness suite: stage runs in-process or as processes, held locks, digests."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Small regions of small patches (still a 16x16 grid): the tiny ViT-256 runs on 4x4 tokens.
SMALL_TILING = ["region_px=1024", "patch_px=64", "min_tissue=0.05", "backend=openslide"]
TINY_EXTRACT = [
    "model_256=vit256_tiny_test",
    "model_4k=vit4k_tiny_test",
    "progress=false",
    "num_workers=0",
    "backend=openslide",
    "wandb.mode=disabled",
]
TINY_FINETUNE = [
    "model.name=abmil_tiny_test",
    "model.input=feats256",
    "split.n_folds=2",
    "split.val_fraction=0",
    "train.max_epochs=2",
    "wandb.mode=disabled",
]


def main_of(module: str):  # noqa: ANN201 - the stage's ``main``
    """``pipelines.<module>.main``."""
    return importlib.import_module(f"pipelines.{module}").main


def stage(module: str, *args: str) -> int:
    """Run a stage in this process, exactly as its CLI does; return the exit code."""
    return int(main_of(module)(list(args)))


def cli(module: str, *args: str, **kwargs) -> subprocess.CompletedProcess:  # noqa: ANN003
    """Run ``python -m pipelines.<module>`` from the repository root; capture its output."""
    kwargs.setdefault("cwd", REPO)
    return subprocess.run(
        [sys.executable, "-m", f"pipelines.{module}", *args],
        capture_output=True,
        text=True,
        check=False,
        **kwargs,
    )


def error_lines(text: str) -> list[str]:
    """The ``ERROR`` log records of a stage's stderr."""
    return [line for line in text.splitlines() if " ERROR " in line]


@contextlib.contextmanager
def held_lock(folder: Path) -> Iterator[int]:
    """Another live process holding ``RunLock(folder)``; yields its pid."""
    code = (
        "import sys, time\nfrom hipt.lock import RunLock\n"
        "RunLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def tree_digest(folder: Path, skip: tuple[str, ...] = ("wandb",)) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest), except in ``skip``."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part in skip for part in rel.parts):
            out[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def isolated_env(root: Path) -> dict[str, str]:
    """Environment whose HOME, TMPDIR and caches point at empty folders under ``root``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WANDB_", "XDG_", "MPLCONFIGDIR", "TORCH_HOME", "HF_"))
    }
    for name in ("home", "tmp"):
        (root / name).mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(root / "home"),
        TMPDIR=str(root / "tmp"),
        WANDB_MODE="offline",
        PYTHONPATH=str(REPO),
    )
    return env
