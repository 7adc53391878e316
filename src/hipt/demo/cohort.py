"""Generate the demo cohort: synthetic patients' slides from real tissue tiles, plus the CSVs.

The labels are planted through the tissue (see :mod:`hipt.demo.phenotype`). Generation is
deterministic in ``seed``; a folder generated earlier with the same generator version and
settings is reused as is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hipt.config import to_container
from hipt.demo.phenotype import draw_patients, layout_stats, slide_layout
from hipt.errors import HiptError
from hipt.io import atomic_output, atomic_write_text, remove_path
from hipt.samples import sample_slide_path
from hipt.slides.synthetic import make_synthetic_slide, saturation_unit, tissue_tiles_from_sample

log = logging.getLogger(__name__)

#: Bump when a change makes the generator draw other slides or labels from the same seed.
GENERATOR_VERSION = 3
CELL_UM = 64.0  # layout cell side in µm: 128 px at 0.5 µm/px, so a 256-px patch has 2 x 2 cells
BANK_TILE_PX = 128  # source tiles are cut at this size from the 0.499 µm/px sample: true scale
MIN_BANK = 16
REGION_UM = 4096 * 0.5
SAMPLE_ID = "cmu_small_region"


@dataclasses.dataclass
class CohortConfig:
    """What the demo cohort looks like.

    Attributes:
        n_patients: synthetic patients (labels balanced across them).
        slides_per_patient: inclusive range of slides per patient.
        regions: ``[rows, cols]`` of 4096-px regions at 0.5 µm/px (2048 µm) per slide.
        fine_mpp_every: every n-th patient is scanned at 0.25 µm/px with levels (1, 2, 8), so
            the tile stage reads its regions from level 1; the others are 0.5 µm/px with
            levels (1, 4, 16). 0: none.
        jpeg_quality: JPEG quality of the slide tiles.
        include_sample: add the real sample slide to the tile manifest (tiled, pretrained on,
            extracted and drawn; it has no labels, so it is not in the cohort CSV).
    """

    n_patients: int = 60
    slides_per_patient: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    regions: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    fine_mpp_every: int = 11
    jpeg_quality: int = 80
    include_sample: bool = True


@dataclasses.dataclass(frozen=True)
class CohortFiles:
    """Paths of a generated cohort.

    Attributes:
        root: the cohort folder.
        cohort_csv: ``slide_id, patient_id, subtype, stage, response, time, event``.
        manifest_csv: ``slide_id, path`` of every slide to tile (synthetic + sample).
        truth_csv: per patient, the latent phenotype and what was measured on its layouts.
        info_json: generator version, seed, settings, file sizes and timing.
    """

    root: Path

    @property
    def cohort_csv(self) -> Path:
        """The cohort CSV."""
        return self.root / "cohort.csv"

    @property
    def manifest_csv(self) -> Path:
        """The tile stage's slide manifest."""
        return self.root / "manifest.csv"

    @property
    def truth_csv(self) -> Path:
        """The latent phenotype per patient."""
        return self.root / "truth.csv"

    @property
    def info_json(self) -> Path:
        """The generator record."""
        return self.root / "cohort.json"

    def info(self) -> dict[str, Any]:
        """The ``cohort.json`` content."""
        return json.loads(self.info_json.read_text())


def dense_score(tiles: np.ndarray) -> np.ndarray:
    """Share of each tile's tissue pixels that look haematoxylin-rich (nuclei).

    A pixel is tissue when its HSV saturation is > 0.08, and haematoxylin-rich when it is also
    dark (mean RGB < 150) and blue-purple rather than pink (blue >= red - 12).
    """
    x = tiles.astype(np.float32)
    tissue = saturation_unit(tiles) > 0.08
    dark_purple = (x.mean(-1) < 150) & (x[..., 2] >= x[..., 0] - 12) & tissue
    return dark_purple.sum(axis=(1, 2)) / np.maximum(tissue.sum(axis=(1, 2)), 1)


def split_banks(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei-dense (score >= 0.5) and stroma-rich (score <= 0.25) tiles; the middle is unused.

    Raises:
        HiptError: a bank has fewer than :data:`MIN_BANK` tiles.
    """
    score = dense_score(tiles)
    dense, stroma = tiles[score >= 0.5], tiles[score <= 0.25]
    if min(len(dense), len(stroma)) < MIN_BANK:
        raise HiptError(
            f"the sample slide gives {len(dense)} nuclei-dense and {len(stroma)} stroma-rich "
            f"tiles; the demo needs >= {MIN_BANK} of each"
        )
    return dense, stroma


def settings_key(cfg: CohortConfig, seed: int) -> str:
    """sha256 of the generator version, seed and settings: equal keys give equal cohorts."""
    blob = json.dumps(
        {"version": GENERATOR_VERSION, "seed": seed, "cohort": to_container(cfg)}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def is_current(files: CohortFiles, key: str) -> bool:
    """Whether ``files`` holds a complete cohort made with ``key`` (files present, same sizes)."""
    try:
        info = files.info()
    except (OSError, ValueError):
        return False
    if info.get("key") != key:
        return False
    for rel, size in info.get("files", {}).items():
        path = files.root / rel
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def _slide_plan(cfg: CohortConfig, patient_index: int) -> tuple[float, tuple[int, ...]]:
    fine = cfg.fine_mpp_every > 0 and patient_index % cfg.fine_mpp_every == cfg.fine_mpp_every - 1
    return (0.25, (1, 2, 8)) if fine else (0.5, (1, 4, 16))


def _write(cfg: CohortConfig, seed: int, root: Path) -> dict[str, Any]:
    """Write every slide and CSV into ``root``; return the per-file sizes and timing."""
    rng = np.random.default_rng(seed)
    dense_bank, stroma_bank = split_banks(tissue_tiles_from_sample(tile_px=BANK_TILE_PX))
    patients = draw_patients(cfg.n_patients, rng)
    rows, cols = cfg.regions
    slides, measured = [], []
    lo, hi = cfg.slides_per_patient
    for i, p in enumerate(patients.itertuples(index=False)):
        mpp, levels = _slide_plan(cfg, i)
        cell_px = round(CELL_UM / mpp)
        width, height = round(cols * REGION_UM / mpp), round(rows * REGION_UM / mpp)
        grid = (-(-height // cell_px), -(-width // cell_px))
        stats = []
        for j in range(int(rng.integers(lo, hi + 1))):
            layout = slide_layout(*grid, p.extent, p.dense_share, p.arrangement, rng)
            sid = f"{p.patient_id}-S{j}"
            make_synthetic_slide(
                root / "slides" / f"{sid}.svs",
                width,
                height,
                mpp,
                levels,
                layout,
                seed=int(rng.integers(2**31)),
                jpeg_quality=cfg.jpeg_quality,
                cell_px=cell_px,
                sources=[dense_bank, stroma_bank],
            )
            stats.append(layout_stats(layout))
            slides.append({"slide_id": sid, "patient_id": p.patient_id, "mpp": mpp})
        measured.append({k: float(np.mean([s[k] for s in stats])) for k in stats[0]})
    table = pd.DataFrame(slides).merge(patients, on="patient_id")
    cohort = table[["slide_id", "patient_id", "subtype", "stage", "response", "time", "event"]]
    atomic_write_text(root / "cohort.csv", cohort.to_csv(index=False))
    truth = patients.join(pd.DataFrame(measured).add_prefix("measured_"))
    atomic_write_text(root / "truth.csv", truth.to_csv(index=False, float_format="%.5g"))
    manifest = [{"slide_id": s["slide_id"], "path": f"slides/{s['slide_id']}.svs"} for s in slides]
    if cfg.include_sample:
        manifest.append({"slide_id": SAMPLE_ID, "path": str(sample_slide_path().resolve())})
    atomic_write_text(root / "manifest.csv", pd.DataFrame(manifest).to_csv(index=False))
    return {
        "files": {
            str(f.relative_to(root)): f.stat().st_size
            for f in sorted(root.rglob("*"))
            if f.is_file()
        },
        "n_slides": len(slides),
        "banks": {"nuclei_dense": len(dense_bank), "stroma_rich": len(stroma_bank)},
        "censored": float(1 - patients["event"].mean()),
    }


def generate_cohort(
    out: str | Path, cfg: CohortConfig | None = None, seed: int = 0, force: bool = False
) -> CohortFiles:
    """Generate the cohort into ``out`` unless it already holds the same one.

    The folder is written under a temporary name and renamed when complete, so an interrupted
    run leaves no half cohort behind.

    Args:
        out: the cohort folder (``slides/``, ``cohort.csv``, ``manifest.csv``, ``truth.csv``,
            ``cohort.json``).
        cfg: cohort settings (defaults: :class:`CohortConfig`).
        seed: everything is drawn from this seed.
        force: regenerate even when the folder is current.
    """
    cfg = cfg or CohortConfig()
    files = CohortFiles(Path(out))
    key = settings_key(cfg, seed)
    if not force and is_current(files, key):
        log.info(
            "demo cohort in %s is current (generator v%d, seed %d); reused",
            files.root,
            GENERATOR_VERSION,
            seed,
        )
        return files
    t0 = time.perf_counter()
    with atomic_output(files.root) as tmp:
        remove_path(tmp)
        tmp.mkdir(parents=True)
        info = _write(cfg, seed, tmp)
        info.update(
            key=key,
            version=GENERATOR_VERSION,
            seed=seed,
            cohort=to_container(cfg),
            seconds=round(time.perf_counter() - t0, 2),
        )
        (tmp / "cohort.json").write_text(json.dumps(info, indent=2) + "\n")
    log.info(
        "demo cohort: %d patients, %d slides in %.1fs -> %s",
        cfg.n_patients,
        info["n_slides"],
        info["seconds"],
        files.root,
    )
    return files
