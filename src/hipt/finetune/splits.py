"""Patient-level stratified k-fold splits (disjoint test folds + carved validation), on disk."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from hipt.errors import ConfigError, HiptError, StaleOutputError
from hipt.io import atomic_write_json, atomic_write_text, remove_path
from hipt.slides.inputs import strip_slide_suffix

log = logging.getLogger(__name__)

PARTS = ("train", "val", "test")


def carve_validation(
    index: np.ndarray, strata: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Pick ``round(fraction * len(index))`` (at least 1 if fraction > 0) validation members.

    Fewer are picked only when the strata cannot spare them: every stratum keeps at least one
    training member.

    Per-stratum quotas follow the largest-remainder rule, so each stratum gets
    ``floor`` or ``ceil`` of its proportional share, and no stratum gives away its last member.

    Args:
        index: candidate positions (a training part).
        strata: stratum of each candidate.
        fraction: share of the candidates for validation.
        rng: random generator (which members are picked).

    Returns:
        Sorted positions (subset of ``index``).
    """
    n = len(index)
    if fraction <= 0 or n < 2:
        return np.array([], dtype=index.dtype)
    total = min(max(1, int(round(fraction * n))), n - 1)
    values, counts = np.unique(strata, return_counts=True)
    share = counts * total / n
    quota = np.floor(share).astype(int)
    order = np.argsort(-(share - quota), kind="stable")
    for j in order[: total - quota.sum()]:
        quota[j] += 1
    cap = np.maximum(counts - 1, 0)
    quota = np.minimum(quota, cap)
    # Hand what the caps took back to strata that can spare a member, largest remainder first.
    for j in order:
        give = min(total - int(quota.sum()), int(cap[j] - quota[j]))
        quota[j] += max(give, 0)
    picked = []
    for value, q in zip(values, quota, strict=True):
        members = index[strata == value]
        picked.extend(rng.choice(members, size=int(q), replace=False).tolist())
    return np.sort(np.asarray(picked, dtype=index.dtype))


def make_folds(
    patient_ids: Sequence[str], strata: np.ndarray, n_folds: int, val_fraction: float, seed: int
) -> list[pd.DataFrame]:
    """Stratified k-fold over patients: disjoint test folds covering all, validation carved.

    Returns:
        One frame per fold with columns ``patient_id`` and ``part`` (train/val/test).
    """
    if n_folds < 2:
        raise ConfigError(f"split.n_folds must be >= 2, got {n_folds}")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"split.val_fraction must be in [0, 1), got {val_fraction}")
    ids = np.asarray(patient_ids, dtype=object)
    strata = np.asarray(strata)
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for k, (train, test) in enumerate(skf.split(np.zeros(len(ids)), strata)):
        val = carve_validation(train, strata[train], val_fraction, np.random.default_rng([seed, k]))
        part = np.full(len(ids), "train", dtype=object)
        part[val], part[test] = "val", "test"
        folds.append(pd.DataFrame({"patient_id": ids, "part": part}))
    return folds


def check_folds(folds: Sequence[pd.DataFrame], patient_ids: Sequence[str], complete: bool) -> None:
    """Raise :class:`HiptError` when folds break the split rules.

    Always: a patient twice in one fold, an unknown part, an unknown patient, an empty train or
    test part. With ``complete``: a fold missing a patient, overlapping test folds, or test
    folds that do not cover every patient.
    """
    everyone = set(patient_ids)
    tested: list[str] = []
    for k, fold in enumerate(folds):
        bad_part = set(fold["part"]) - set(PARTS)
        if bad_part:
            raise HiptError(f"fold {k}: unknown part(s) {sorted(bad_part)} (use {PARTS})")
        dup = fold["patient_id"][fold["patient_id"].duplicated()]
        if len(dup):
            raise HiptError(f"fold {k}: patient(s) {sorted(set(dup))[:5]} in two parts")
        unknown = set(fold["patient_id"]) - everyone
        if unknown:
            raise HiptError(f"fold {k}: patient(s) not in the cohort: {sorted(unknown)[:5]}")
        if complete and set(fold["patient_id"]) != everyone:
            missing = sorted(everyone - set(fold["patient_id"]))
            raise HiptError(f"fold {k}: patient(s) missing: {missing[:5]}")
        if (fold["part"] == "train").sum() == 0 or (fold["part"] == "test").sum() == 0:
            raise HiptError(f"fold {k}: empty train or test part")
        tested += fold.loc[fold["part"] == "test", "patient_id"].tolist()
    if complete:
        if len(tested) != len(set(tested)):
            raise HiptError("test folds overlap")
        if set(tested) != everyone:
            raise HiptError("test folds do not cover every patient")


def write_folds(folder: Path, folds: Sequence[pd.DataFrame], settings: dict[str, Any]) -> None:
    """``folder/fold_<k>.csv`` + ``folder/splits.json`` (the settings that made them)."""
    for k, fold in enumerate(folds):
        atomic_write_text(folder / f"fold_{k}.csv", fold.to_csv(index=False))
    atomic_write_json(folder / "splits.json", settings)


def read_folds(folder: Path) -> list[pd.DataFrame]:
    """Every ``fold_<k>.csv`` in ``folder`` (k = 0, 1, ... without gaps)."""
    files = sorted(folder.glob("fold_*.csv"), key=lambda p: int(p.stem.split("_")[1]))
    if [int(p.stem.split("_")[1]) for p in files] != list(range(len(files))):
        raise HiptError(f"{folder}: fold files must be fold_0.csv .. fold_<k-1>.csv")
    return [pd.read_csv(p, dtype={"patient_id": str, "part": str}) for p in files]


def _patient_of(slides: pd.DataFrame, patient_ids: Sequence[str]) -> dict[str, str]:
    """Map patient ids, slide ids and slide ids without a slide-file suffix to patients."""
    out = {p: p for p in patient_ids}
    for sid, pid in zip(slides["slide_id"], slides["patient_id"], strict=True):
        out[sid] = pid
        stem = strip_slide_suffix(sid)
        if stem is not None:
            out[stem] = pid
    return out


def read_official(
    folder: Path, slides: pd.DataFrame, patient_ids: Sequence[str], overlap: str
) -> list[pd.DataFrame]:
    """Official HIPT/MCAT ``splits_<k>.csv`` (ragged train/val[/test] id columns) as folds.

    Ids may be slide ids (with or without ``.svs``) or patient ids; ids not in the cohort are
    dropped (as the official loaders do). Without a ``test`` column (MCAT survival) the ``val``
    column is the evaluation fold. A patient in two parts is an error, or with
    ``overlap="drop"`` is kept only in ``test`` (else ``val``).
    """
    if overlap not in ("error", "drop"):
        raise ConfigError(f"split.official_overlap must be error or drop, got '{overlap}'")
    files = sorted(folder.glob("splits_*.csv"), key=lambda p: int(p.stem.split("_")[1]))
    files = [p for p in files if p.stem.split("_")[1].isdigit() and p.stem.count("_") == 1]
    if not files:
        raise HiptError(f"{folder}: no official splits_<k>.csv files")
    lookup = _patient_of(slides, patient_ids)
    folds = []
    for path in files:
        table = pd.read_csv(path, dtype=str)
        cols = {"train": "train", "val": "test" if "test" not in table else "val", "test": "test"}
        parts: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
        dropped = 0
        for col, part in cols.items():
            for raw in table.get(col, pd.Series(dtype=str)).dropna():
                pid = lookup.get(str(raw).strip())
                if pid is None:
                    dropped += 1
                else:
                    parts[part].add(pid)
        both = (parts["train"] & (parts["val"] | parts["test"])) | (parts["val"] & parts["test"])
        if both and overlap == "error":
            raise HiptError(
                f"{path}: {len(both)} patient(s) in two parts (e.g. {sorted(both)[:3]}); the "
                "official subtyping splits are slide-level. Set split.official_overlap=drop to "
                "keep such patients only in their evaluation part"
            )
        parts["train"] -= parts["val"] | parts["test"]
        parts["val"] -= parts["test"]
        rows = [(p, part) for part in PARTS for p in sorted(parts[part])]
        folds.append(pd.DataFrame(rows, columns=["patient_id", "part"]))
        log.info(
            "%s: %s (%d ids not in the cohort dropped, %d patients in two parts)",
            path.name,
            {k: len(v) for k, v in parts.items()},
            dropped,
            len(both),
        )
    return folds


def load_or_make_folds(
    folder: Path,
    patients: pd.DataFrame,
    slides: pd.DataFrame,
    strata: np.ndarray,
    n_folds: int,
    val_fraction: float,
    seed: int,
    official_dir: str | None = None,
    official_overlap: str = "error",
    overwrite: bool = False,
) -> list[pd.DataFrame]:
    """Reuse ``folder/fold_<k>.csv`` when present, else make (or import) and write them.

    Splits made with other settings are an error, or with ``overwrite`` are made again.
    """
    ids = patients["patient_id"].tolist()
    settings = {
        "n_folds": n_folds if not official_dir else "official",
        "val_fraction": val_fraction,
        "seed": seed,
        "official_dir": official_dir,
        "n_patients": len(ids),
    }
    if any(folder.glob("fold_*.csv")):
        folds = read_folds(folder)
        meta = folder / "splits.json"
        if meta.is_file():
            old = json.loads(meta.read_text())
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            if diff and overwrite:
                log.info("splits in %s were made with %s (was, now); making new ones", folder, diff)
                remove_path(folder)
                return load_or_make_folds(
                    folder,
                    patients,
                    slides,
                    strata,
                    n_folds,
                    val_fraction,
                    seed,
                    official_dir,
                    official_overlap,
                )
            if diff:
                raise StaleOutputError(
                    f"{folder} holds splits made with other settings {diff} (was, now); delete "
                    "the folder or choose another out="
                )
        try:
            check_folds(folds, ids, complete=official_dir is None)
        except HiptError as exc:
            raise StaleOutputError(f"{folder} does not fit this cohort: {exc}") from None
        log.info("reusing %d folds from %s", len(folds), folder)
        return folds
    if official_dir:
        folds = read_official(Path(official_dir), slides, ids, official_overlap)
        check_folds(folds, ids, complete=False)
    else:
        folds = make_folds(ids, strata, n_folds, val_fraction, seed)
        check_folds(folds, ids, complete=True)
    write_folds(folder, folds, settings)
    return folds
