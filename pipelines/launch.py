"""How the multi-stage runners (demo, pipeline) start a stage: in this process or as a child."""

from __future__ import annotations

import functools
import importlib
import shlex
import subprocess
import sys
from collections.abc import Callable


def in_process(module: str, argv: list[str]) -> int:
    """Run ``pipelines.<module>.main(argv)`` in this process (no interpreter start per stage)."""
    return int(importlib.import_module(f"pipelines.{module}").main(argv))


def as_process(module: str, argv: list[str]) -> int:
    """Run ``python -m pipelines.<module> argv`` as a child process."""
    return subprocess.run(
        [sys.executable, "-m", f"pipelines.{module}", *argv], check=False
    ).returncode


def _prefixed(prefix: list[str], module: str, argv: list[str]) -> int:
    cmd = [*prefix, sys.executable, "-m", f"pipelines.{module}", *argv]
    return subprocess.run(cmd, check=False).returncode


def with_prefix(prefix: str) -> Callable[[str, list[str]], int]:
    """A launcher running ``<prefix> python -m pipelines.<module> argv`` (e.g. ``srun``).

    Picklable (a partial of a module-level function), like the other launchers.
    """
    return functools.partial(_prefixed, shlex.split(prefix))
