"""Planted-signal cohorts: feature stores where one region per patient carries every label."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from stores import store_meta

from hipt.features import write_store
from hipt.io import atomic_write_text

SUBTYPES = ("A", "B", "C")
STAGES = ("I", "II", "III", "IV")


@dataclass
class SyntheticCohort:
    """Paths of a generated cohort and its latent truth.

    Attributes:
        csv: cohort CSV (``slide_id, patient_id, subtype, stage, time, event, response``).
        features: folder of ``<slide_id>.zarr`` stores.
        truth: one row per patient with the latent ``risk`` and the signal region's location.
    """

    csv: Path
    features: Path
    truth: pd.DataFrame


def _basis(dim: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` orthonormal directions in ``dim`` dimensions (rows)."""
    if n > dim:
        raise ValueError(f"need {n} signal directions but features have only {dim} dims")
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q[:, :n].T


def _signal(basis: np.ndarray, sub: int, stage: int, resp: int, risk: float) -> np.ndarray:
    """Sum of one direction per label: subtype, stage, response, and risk between two."""
    ns = len(SUBTYPES)
    ng = len(STAGES)
    b = ns + ng
    return (
        basis[sub]
        + basis[ns + stage]
        + basis[b + resp]
        + risk * basis[b + 2]
        + (1.0 - risk) * basis[b + 3]
    )


def make_planted_cohort(
    out_dir: str | Path,
    n_patients: int = 40,
    slides_per_patient: tuple[int, int] = (1, 2),
    regions_per_slide: tuple[int, int] = (2, 5),
    dim_256: int = 32,
    dim_4k: int = 16,
    strength: float = 4.0,
    seed: int = 0,
    model_256: str = "vit256_tiny_test",
    model_4k: str = "vit4k_tiny_test",
    checkpoint_4k_sha256: str | None = None,
    dtype: str = "float32",
    basis_seed: int | None = None,
    prefix: str = "P",
) -> SyntheticCohort:
    """Write stores + cohort CSV where exactly one region of each patient carries the labels.

    Every other region is standard-normal noise. The signal region adds ``strength`` times a
    label direction (orthonormal per label value) to its ``feats4k`` and to all 256 patches of
    its ``feats256``: subtype (3 classes), stage (I-IV), response (2) and a survival risk
    ``r ~ U(0, 1)`` encoded as ``r * u + (1 - r) * v``. Survival times are
    ``100 * exp(-3 r + 0.15 eps)``, censored by ``U(0, 200)`` follow-up.

    Args:
        out_dir: gets ``cohort.csv`` and ``features/``.
        n_patients: patients (labels are drawn balanced by cycling, then shuffled).
        slides_per_patient: inclusive range of slides per patient.
        regions_per_slide: inclusive range of regions per slide.
        dim_256: ``feats256`` width (32 matches the ``*_tiny_test`` models).
        dim_4k: ``feats4k`` width (16 matches ``hipt_lgp_tiny_test``).
        strength: signal scale in noise standard deviations.
        seed: everything is drawn from this seed.
        model_256: recorded ViT-256 name.
        model_4k: recorded ViT-4K name.
        checkpoint_4k_sha256: recorded ViT-4K checkpoint digest (None = random weights).
        dtype: store dtype.
        basis_seed: seed of the label directions alone (default: drawn from ``seed`` first);
            an independent cohort with the same biology shares it with the training cohort.
        prefix: first letter(s) of the patient ids.
    """
    out = Path(out_dir)
    features = out / "features"
    features.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_dirs = len(SUBTYPES) + len(STAGES) + 4
    brng = rng if basis_seed is None else np.random.default_rng(basis_seed)
    basis_256, basis_4k = _basis(dim_256, n_dirs, brng), _basis(dim_4k, n_dirs, brng)

    def balanced(k: int) -> np.ndarray:
        return rng.permutation(np.arange(n_patients) % k)

    subtype, stage, response = balanced(len(SUBTYPES)), balanced(len(STAGES)), balanced(2)
    risk = rng.uniform(0, 1, n_patients)
    true_time = 100.0 * np.exp(-3.0 * risk + 0.15 * rng.normal(size=n_patients))
    follow_up = rng.uniform(0, 200, n_patients)
    event = (true_time <= follow_up).astype(int)
    time = np.round(np.minimum(true_time, follow_up), 2)
    rows, truth = [], []
    for i in range(n_patients):
        pid = f"{prefix}{i:03d}"
        n_slides = int(rng.integers(slides_per_patient[0], slides_per_patient[1] + 1))
        sizes = rng.integers(regions_per_slide[0], regions_per_slide[1] + 1, n_slides)
        hit_slide, hit_region = int(rng.integers(n_slides)), -1
        for j, m in enumerate(sizes):
            sid = f"{pid}-S{j}"
            f256 = rng.normal(size=(m, 256, dim_256))
            f4k = rng.normal(size=(m, dim_4k))
            if j == hit_slide:
                hit_region = int(rng.integers(m))
                args = (subtype[i], stage[i], response[i], risk[i])
                f256[hit_region] += strength * _signal(basis_256, *args)
                f4k[hit_region] += strength * _signal(basis_4k, *args)
            coords = np.stack([np.arange(m) * 4096, np.zeros(m)], 1).astype(np.int64)
            meta = store_meta(
                sid,
                model_256=model_256,
                model_4k=model_4k,
                checkpoint_4k_sha256=checkpoint_4k_sha256,
                feature_dim_256=dim_256,
                feature_dim_4k=dim_4k,
                tiling_config_hash="synthetic",
                dtype=dtype,
            )
            write_store(features / f"{sid}.zarr", meta, f256, f4k, coords, np.ones((m, 256), bool))
            rows.append(
                {
                    "slide_id": sid,
                    "patient_id": pid,
                    "subtype": SUBTYPES[subtype[i]],
                    "stage": STAGES[stage[i]],
                    "time": time[i],
                    "event": event[i],
                    "response": "responder" if response[i] else "non-responder",
                }
            )
        truth.append(
            {
                "patient_id": pid,
                "risk": risk[i],
                "signal_slide": f"{pid}-S{hit_slide}",
                "signal_region": hit_region,
            }
        )
    csv = out / "cohort.csv"
    atomic_write_text(csv, pd.DataFrame(rows).to_csv(index=False))
    return SyntheticCohort(csv=csv, features=features, truth=pd.DataFrame(truth))
