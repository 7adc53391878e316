"""Run provenance: code version, package versions, config hash and inputs, written as run.json."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from hipt.io import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[2]
TRACKED_PACKAGES = (
    "hipt", "torch", "torchvision", "lightning", "timm", "lightly", "zarr", "cucim-cu13",
    "openslide-python", "openslide-bin", "tifffile", "imagecodecs", "torchmetrics", "pycox",
    "omegaconf", "wandb", "numpy", "pandas",
)  # fmt: skip


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, ``None`` where it is not installed."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(root: Path = REPO_ROOT) -> tuple[str | None, bool | None]:
    """``(sha, dirty)`` of the checkout holding the code, or ``(None, None)`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None, None
    return sha, bool(status.strip())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_input(path: str | Path) -> dict[str, Any]:
    """Path, kind and size (bytes; folders sum their files) of an input."""
    p = Path(path)
    if p.is_dir():
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return {"path": str(p), "kind": "dir", "size_bytes": size}
    if p.is_file():
        return {"path": str(p), "kind": "file", "size_bytes": p.stat().st_size}
    return {"path": str(p), "kind": "missing", "size_bytes": None}


@dataclasses.dataclass
class RunInfo:
    """What produced a stage's outputs; stored as ``run.json`` next to them."""

    stage: str
    config_hash: str
    git_sha: str | None
    git_dirty: bool | None
    versions: dict[str, str | None]
    inputs: list[dict[str, Any]]
    created_at: str
    host: str
    python: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def collect(
        cls,
        stage: str,
        config_hash: str,
        inputs: list[str | Path] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> RunInfo:
        """Gather provenance for the current process."""
        sha, dirty = git_state()
        return cls(
            stage=stage,
            config_hash=config_hash,
            git_sha=sha,
            git_dirty=dirty,
            versions=package_versions(),
            inputs=[describe_input(p) for p in inputs or []],
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            host=socket.gethostname(),
            python=f"{sys.version.split()[0]} ({platform.platform()})",
            extra=dict(extra or {}),
        )

    def write(self, out_dir: str | Path) -> Path:
        """Write ``run.json`` into ``out_dir`` atomically."""
        path = Path(out_dir) / "run.json"
        atomic_write_json(path, dataclasses.asdict(self))
        return path
