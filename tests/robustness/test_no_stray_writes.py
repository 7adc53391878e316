"""Stages write only inside their output folder: not in the working directory, HOME or TMPDIR."""

from __future__ import annotations

from pathlib import Path

import pytest
from robust_utils import SMALL_TILING, TINY_FINETUNE, cli, isolated_env

from hipt.samples import sample_slide_path


def _stray(root: Path, out: Path) -> list[str]:
    files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    inside = str(out.relative_to(root)) + "/"
    return sorted(f for f in files if not f.startswith(inside))


@pytest.mark.parametrize("module", ["tile", "finetune"])
def test_only_out_is_written(module, planted, tmp_path):
    """Run with cwd, HOME and TMPDIR on empty folders and W&B offline: after the run, every
    new file is under OUT (W&B's debug logs and artifact staging, and matplotlib's font cache
    included)."""
    env = isolated_env(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "cwd" / "out"
    if module == "tile":
        args = [f"slides={sample_slide_path()}", *SMALL_TILING]
    else:
        args = [
            "task=subtype",
            f"cohort={planted.csv}",
            f"features={planted.features}",
            *[a for a in TINY_FINETUNE if not a.startswith("wandb")],
        ]
    done = cli(module, *args, f"out={out}", cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert any((out / "wandb").glob("offline-run-*"))
    assert _stray(tmp_path, out) == []
