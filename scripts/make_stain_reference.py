"""Cut the shipped stain reference (``src/hipt/stain/reference_he.png``) from the sample slide.

Usage::

    python scripts/make_stain_reference.py [--slide data/samples/cmu_small_region.svs]

Scans 256-px windows (stride 128) of level 0 (0.499 µm/px, the 20x scale HIPT patches are read
at) and keeps the one that is >= 90 % tissue and has the best balance of hematoxylin- and
eosin-dominated pixels, so that a Macenko fit on it sees both stains. Stain amounts come from a
colour deconvolution with torchstain's default H&E matrix; tissue is torchstain's own criterion
(optical density >= 0.15 in all three channels). Deterministic: same slide, same patch.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from pathlib import Path

import numpy as np
import openslide
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hipt.samples import sample_slide_path  # noqa: E402
from hipt.stain.normalizer import BETA, IO  # noqa: E402

log = logging.getLogger("make_stain_reference")

PX = 256
STRIDE = 128
MIN_TISSUE = 0.9
#: torchstain's default Macenko reference (columns: hematoxylin, eosin), used only to score.
HE_DEFAULT = torch.tensor([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
OUT = REPO / "src" / "hipt" / "stain" / "reference_he.png"


def score(patch: np.ndarray) -> tuple[float, float]:
    """Tissue fraction and H/E balance ``min(frac_H, frac_E)`` of one ``[H, W, 3]`` uint8 patch."""
    od = -torch.log((torch.from_numpy(patch.copy()).reshape(-1, 3).float() + 1) / IO)
    tissue = (od >= BETA).all(dim=1)
    frac = float(tissue.float().mean())
    if int(tissue.sum()) < 16:
        return frac, 0.0
    conc = torch.linalg.lstsq(HE_DEFAULT, od[tissue].T).solution  # [2, N]
    h_dom = float((conc[0] > conc[1]).float().mean())
    return frac, min(h_dom, 1.0 - h_dom)


def main() -> None:
    """Pick the patch, save it as PNG and log its position and sha256."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    slide_path = args.slide or sample_slide_path()
    with openslide.OpenSlide(str(slide_path)) as slide:
        width, height = slide.dimensions
        image = np.asarray(slide.read_region((0, 0), 0, (width, height)).convert("RGB"))
    best: tuple[float, float, int, int] | None = None
    for y in range(0, height - PX + 1, STRIDE):
        for x in range(0, width - PX + 1, STRIDE):
            frac, balance = score(image[y : y + PX, x : x + PX])
            if frac >= MIN_TISSUE and (best is None or (balance, frac) > best[:2]):
                best = (balance, frac, x, y)
    if best is None:
        raise SystemExit(f"no {PX}-px window of {slide_path} is >= {MIN_TISSUE:.0%} tissue")
    balance, frac, x, y = best
    Image.fromarray(image[y : y + PX, x : x + PX]).save(args.out, optimize=False)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    log.info("x=%d y=%d tissue=%.3f h/e balance=%.3f -> %s sha256 %s", x, y, frac, balance,
             args.out, digest)  # fmt: skip


if __name__ == "__main__":
    main()
