"""The demo cohort's phenotype -> label rules: what each slide shows, and the labels it implies.

Every synthetic slide is a grid of 64-µm cells (128 px at 0.5 µm/px, so one 256-px ViT-256
patch holds 2 x 2 cells). A cell is glass, *nuclei-dense* tissue (dark, haematoxylin-rich
tiles of the sample slide) or *stroma-rich* tissue (pale, eosin-pink tiles); see
:func:`hipt.demo.cohort.split_banks` for the colour rule. A patient's labels are planted
through three independent properties of its slides, drawn balanced across patients:

==========  =====================================================  ===========================
label       what the tissue shows                                   levels needed to read it
==========  =====================================================  ===========================
subtype     share of nuclei-dense cells among tissue cells:         colour of patches (ViT-256)
            A: 0.10-0.25, B: 0.65-0.80
stage       tissue extent (share of the slide's cells that are      tissue vs glass patches
            tissue): I 0.30, II 0.45, III 0.60, IV 0.75 (+-0.03)    counted over the slide
response    how the nuclei-dense cells spread over the slide's      region embeddings compared
            2 x 2 mm regions: *focal* (they fill one region         across the slide (ViT-4K
            first, then spill over; responder) or *diffuse*         regions -> slide
            (the same share in every region; non-responder);        transformer); a pool of
            inside a region they are placed at random               patches sees one mixture
survival    exponential hazard ``h = ln 2 / 24 * exp(2 * z)``       all of the above
            per month, ``z = (share - 0.45) / 0.25 + 0.25 *
            (stage - 1.5)``; follow-up ~ U(12, 180) months
            censors the time (``event = 0``)
==========  =====================================================  ===========================

A model that pools patch colours learns subtype and stage (and so survival); response needs a
model that compares regions, i.e. reads the region level too (every slide has >= 2 regions).
With the labels shuffled across patients (the control) nothing is learnable.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import pandas as pd
from scipy import ndimage

#: Cell classes of an integer layout (:func:`hipt.slides.synthetic.make_synthetic_slide`).
GLASS, DENSE, STROMA = 0, 1, 2
SUBTYPES = ("A", "B")
STAGES = ("I", "II", "III", "IV")
RESPONSES = ("non-responder", "responder")
SHARE_RANGE = {"A": (0.10, 0.25), "B": (0.65, 0.80)}
EXTENT = {"I": 0.30, "II": 0.45, "III": 0.60, "IV": 0.75}
EXTENT_JITTER = 0.03
BETA = 2.0
BASE_HAZARD = np.log(2.0) / 24.0  # median survival 24 months at z = 0
FOLLOW_UP = (12.0, 180.0)
REGION_CELLS = 32  # a 4096-px region at 0.5 µm/px is 32 x 32 cells of 64 µm


def risk_score(share: np.ndarray, stage_index: np.ndarray) -> np.ndarray:
    """The latent survival score ``z`` (log hazard ratio / BETA) of the module table."""
    return (np.asarray(share) - 0.45) / 0.25 + 0.25 * (np.asarray(stage_index) - 1.5)


def draw_patients(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Balanced labels and the phenotype each one implies, one row per patient.

    Returns:
        Columns ``patient_id, subtype, stage, response, dense_share, extent, arrangement,
        risk, true_time, follow_up, time, event``.
    """

    def balanced(k: int) -> np.ndarray:
        return rng.permutation(np.arange(n) % k)

    subtype, stage, response = balanced(len(SUBTYPES)), balanced(len(STAGES)), balanced(2)
    share = np.array([rng.uniform(*SHARE_RANGE[SUBTYPES[s]]) for s in subtype])
    extent = np.array([EXTENT[STAGES[s]] for s in stage])
    extent = extent + rng.uniform(-EXTENT_JITTER, EXTENT_JITTER, n)
    z = risk_score(share, stage)
    true_time = -np.log(rng.uniform(size=n)) / (BASE_HAZARD * np.exp(BETA * z))
    follow_up = rng.uniform(*FOLLOW_UP, n)
    return pd.DataFrame(
        {
            "patient_id": [f"DEMO-{i:03d}" for i in range(n)],
            "subtype": [SUBTYPES[s] for s in subtype],
            "stage": [STAGES[s] for s in stage],
            "response": [RESPONSES[r] for r in response],
            "dense_share": share,
            "extent": extent,
            "arrangement": np.where(response == 1, "focal", "diffuse"),
            "risk": z,
            "true_time": true_time,
            "follow_up": follow_up,
            "time": np.round(np.minimum(true_time, follow_up), 2),
            "event": (true_time <= follow_up).astype(int),
        }
    )


def _top(field: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the ``k`` candidate cells with the highest ``field`` values."""
    out = np.zeros(field.shape, dtype=bool)
    idx = np.flatnonzero(candidates)
    if k > 0 and len(idx):
        out.flat[idx[np.argsort(field.flat[idx])[::-1][:k]]] = True
    return out


def _blocks(rows: int, cols: int, size: int) -> np.ndarray:
    """Index of the ``size`` x ``size`` block (region) of every cell, row-major."""
    r, c = np.meshgrid(np.arange(rows) // size, np.arange(cols) // size, indexing="ij")
    return r * (-(-cols // size)) + c


def slide_layout(
    rows: int,
    cols: int,
    extent: float,
    dense_share: float,
    arrangement: str,
    rng: np.random.Generator,
    region_cells: int = REGION_CELLS,
) -> np.ndarray:
    """Integer cell layout (:data:`GLASS`, :data:`DENSE`, :data:`STROMA`) of one slide.

    Tissue is the ``extent`` share of cells with the highest value of a smooth random field
    (blobs of tissue on glass). ``dense_share`` of the tissue cells are nuclei-dense, at random
    places inside a region, distributed over the regions by ``arrangement``: ``diffuse`` gives
    every region the same share of its tissue, ``focal`` fills one random region (of those
    with tissue) first and spreads the rest at random.
    """
    if arrangement not in ("focal", "diffuse"):
        raise ValueError(f"arrangement must be focal or diffuse, got {arrangement!r}")
    sigma = max(rows, cols) / 10
    tissue_field = ndimage.gaussian_filter(rng.standard_normal((rows, cols)), sigma=sigma)
    tissue = _top(tissue_field, np.ones((rows, cols), bool), round(extent * rows * cols))
    blocks = _blocks(rows, cols, region_cells)
    noise = rng.random((rows, cols))
    if arrangement == "focal":
        focal = rng.choice(np.unique(blocks[tissue]))
        dense = _top(noise + 2.0 * (blocks == focal), tissue, round(dense_share * tissue.sum()))
    else:
        dense = np.zeros_like(tissue)
        for b in np.unique(blocks[tissue]):
            inside = tissue & (blocks == b)
            dense |= _top(noise, inside, round(dense_share * inside.sum()))
    layout = np.full((rows, cols), GLASS, dtype=np.int64)
    layout[tissue] = STROMA
    layout[dense] = DENSE
    return layout


def region_shares(layout: np.ndarray, region_cells: int = REGION_CELLS) -> np.ndarray:
    """Nuclei-dense share of the tissue of each region that is at least 5 % tissue."""
    blocks = _blocks(*cast(tuple[int, int], layout.shape), region_cells)
    shares = []
    for b in np.unique(blocks):
        tissue = (layout != GLASS) & (blocks == b)
        if tissue.sum() >= 0.05 * (blocks == b).sum():
            shares.append(((layout == DENSE) & (blocks == b)).sum() / tissue.sum())
    return np.array(shares)


def layout_stats(layout: np.ndarray, region_cells: int = REGION_CELLS) -> dict[str, float]:
    """Measured phenotype of a layout: extent, dense share and region spread.

    ``region_spread`` is max - min of the regions' dense shares: ~0 when diffuse, large when
    focal.
    """
    tissue = layout != GLASS
    shares = region_shares(layout, region_cells)
    return {
        "extent": float(tissue.mean()),
        "dense_share": float((layout == DENSE).sum() / max(tissue.sum(), 1)),
        "region_spread": float(np.ptp(shares)) if len(shares) else 0.0,
    }
