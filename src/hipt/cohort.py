"""Cohort CSV loading and validation: every problem is collected and reported at once, by row."""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hipt.errors import HiptError
from hipt.features import PROVENANCE_KEYS, FeatureStoreMeta, find_store, open_store

log = logging.getLogger(__name__)

#: Store metadata that every slide of one cohort must share (else features are not comparable).
SHARED_META = PROVENANCE_KEYS
PATIENT_ALIASES = ("case_id",)
_MAX_ROWS_SHOWN = 12


def row_number(index: int) -> int:
    """CSV row of a 0-based data index, counting the header as row 1 (as spreadsheets show)."""
    return int(index) + 2


@dataclass
class Problem:
    """One validation finding.

    Attributes:
        rows: CSV rows concerned (header = row 1); empty for file-level problems.
        message: what is wrong and, where useful, the fix.
    """

    rows: list[int]
    message: str

    def __str__(self) -> str:
        if not self.rows:
            return self.message
        shown = ", ".join(str(r) for r in self.rows[:_MAX_ROWS_SHOWN])
        more = (
            f" (+{len(self.rows) - _MAX_ROWS_SHOWN} more)"
            if len(self.rows) > _MAX_ROWS_SHOWN
            else ""
        )
        word = "row" if len(self.rows) == 1 else "rows"
        return f"{word} {shown}{more}: {self.message}"


class CohortError(HiptError):
    """The cohort cannot be trained on; ``problems`` lists every finding.

    Args:
        source: the cohort CSV.
        problems: all findings (rows + message).
    """

    def __init__(self, source: str | Path, problems: Sequence[Problem]) -> None:
        self.source = str(source)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s) found:\n{lines}")


@dataclass
class Cohort:
    """A validated cohort.

    Attributes:
        slides: one row per slide: ``slide_id``, ``patient_id``, ``row``, ``store`` (path).
        patients: one row per patient: ``patient_id``, ``slide_ids`` (tuple), ``rows`` (tuple)
            and the task's canonical label columns.
        meta: store metadata shared by all slides (from the first store).
        info: task facts found while reading labels (e.g. class names).
    """

    slides: pd.DataFrame
    patients: pd.DataFrame
    meta: FeatureStoreMeta
    info: dict[str, Any] = field(default_factory=dict)


#: A label reader: ``(rows frame) -> (canonical label frame on the same index, problems)``.
LabelReader = Callable[[pd.DataFrame], tuple[pd.DataFrame, list[Problem]]]


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a cohort CSV with every column as text (ids like ``007`` keep their zeros)."""
    path = Path(path)
    if not path.is_file():
        raise HiptError(f"cohort CSV {path} not found")
    try:
        df = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except (ValueError, OSError) as exc:
        raise HiptError(f"cannot read cohort CSV {path}: {exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if "patient_id" not in df.columns:
        for alias in PATIENT_ALIASES:
            if alias in df.columns:
                df = df.rename(columns={alias: "patient_id"})
                break
    for col in ("slide_id", "patient_id"):
        if col in df.columns:
            df[col] = df[col].str.strip()
    return df


def rows_of(index: Iterable[int]) -> list[int]:
    """CSV rows (header = row 1) of 0-based data indices, sorted."""
    return sorted(row_number(i) for i in index)


def is_missing(value: Any) -> bool:
    """Whether a cohort cell is empty (None, NaN or blank text)."""
    return (
        value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()
    )


def check_ids(df: pd.DataFrame) -> list[Problem]:
    """Missing id columns or values, and duplicate slide ids."""
    missing_cols = [c for c in ("slide_id", "patient_id") if c not in df.columns]
    if missing_cols:
        return [
            Problem(
                [],
                f"missing column(s) {', '.join(missing_cols)} (have: "
                f"{', '.join(df.columns)}); patient ids may also be called case_id",
            )
        ]
    problems = []
    for col in ("slide_id", "patient_id"):
        empty = df.index[df[col].isna() | (df[col] == "")]
        if len(empty):
            problems.append(Problem(rows_of(empty), f"empty {col}"))
    dup = df[df["slide_id"].notna() & df["slide_id"].duplicated(keep=False)]
    for slide_id, group in dup.groupby("slide_id", sort=True):
        problems.append(Problem(rows_of(group.index), f"duplicate slide_id '{slide_id}'"))
    return problems


def check_stores(
    df: pd.DataFrame, features: Path, expect: dict[str, Any]
) -> tuple[dict[int, FeatureStoreMeta], dict[int, Path], list[Problem]]:
    """Open every slide's store (complete, matching ``expect``) and check they agree.

    Returns:
        ``(meta by row index, store path by row index, problems)``.
    """
    metas: dict[int, FeatureStoreMeta] = {}
    paths: dict[int, Path] = {}
    problems: list[Problem] = []
    if not features.is_dir():
        return metas, paths, [Problem([], f"features folder {features} not found")]
    unknown = []
    for idx, slide_id in df["slide_id"].items():
        if not isinstance(slide_id, str) or not slide_id:
            continue
        path = find_store(features, slide_id)
        if not path.exists():
            unknown.append(idx)
            continue
        try:
            store = open_store(path, expect=expect)
        except HiptError as exc:
            problems.append(Problem(rows_of([idx]), f"slide '{slide_id}': {exc}"))
            continue
        if store.n_regions == 0:
            problems.append(Problem(rows_of([idx]), f"slide '{slide_id}': store has no regions"))
            continue
        metas[idx], paths[idx] = store.meta, path
    if unknown:
        problems.append(
            Problem(
                rows_of(unknown),
                f"unknown slide id(s) (no <slide_id>.zarr in {features}): {_ids(df, unknown)}",
            )
        )
    problems.extend(_check_consistent(df, metas))
    return metas, paths, problems


def _ids(df: pd.DataFrame, index: Sequence[int], limit: int = 5) -> str:
    ids = [str(df.at[i, "slide_id"]) for i in index[:limit]]
    return ", ".join(ids) + (" ..." if len(index) > limit else "")


def _check_consistent(df: pd.DataFrame, metas: dict[int, FeatureStoreMeta]) -> list[Problem]:
    """Stores whose extraction settings differ from the most common ones."""
    if not metas:
        return []
    keys = {i: tuple(getattr(m, k) for k in SHARED_META) for i, m in metas.items()}
    common, _ = collections.Counter(keys.values()).most_common(1)[0]
    odd = [i for i, k in keys.items() if k != common]
    if not odd:
        return []
    names = [n for j, n in enumerate(SHARED_META) if any(keys[i][j] != common[j] for i in odd)]
    have = sorted({f"{n}={getattr(metas[i], n)!r}" for i in odd for n in names})
    want = ", ".join(f"{n}={common[SHARED_META.index(n)]!r}" for n in names)
    return [
        Problem(
            rows_of(odd),
            f"feature stores made with other settings ({', '.join(have)}) "
            f"than the majority ({want}); re-extract them",
        )
    ]


def group_patients(
    df: pd.DataFrame, label_cols: Sequence[str], raw: pd.DataFrame
) -> tuple[pd.DataFrame, list[Problem]]:
    """One row per patient; rows of one patient with different labels are a problem.

    Args:
        df: rows with valid ids and labels, holding the canonical ``label_cols``.
        label_cols: canonical label columns.
        raw: the CSV as read, to name the differing values as the user wrote them.
    """
    problems = []
    records = []
    for patient_id, group in df.groupby("patient_id", sort=True):
        labels = group[list(label_cols)].drop_duplicates()
        if len(labels) > 1:
            rows = raw.loc[group.index].drop(columns=["slide_id", "patient_id"])
            differ = [c for c in rows.columns if rows[c].nunique(dropna=False) > 1]
            shown = "; ".join(f"{c}: {' / '.join(map(str, rows[c].unique()))}" for c in differ)
            problems.append(
                Problem(
                    rows_of(group.index), f"patient '{patient_id}' has conflicting labels ({shown})"
                )
            )
            continue
        rec = {
            "patient_id": patient_id,
            "slide_ids": tuple(group["slide_id"]),
            "rows": tuple(rows_of(group.index)),
        }
        rec.update(labels.iloc[0].to_dict())
        records.append(rec)
    cols = ["patient_id", "slide_ids", "rows", *label_cols]
    return pd.DataFrame.from_records(records, columns=cols), problems


def load_cohort(
    csv: str | Path,
    features: str | Path,
    read_labels: LabelReader,
    expect: dict[str, Any] | None = None,
    check_strata: Callable[[pd.DataFrame], list[Problem]] | None = None,
) -> Cohort:
    """Read and validate a cohort; raise :class:`CohortError` listing every problem.

    Args:
        csv: cohort CSV.
        features: folder of ``<slide_id>.zarr`` stores.
        read_labels: the task's label parser (canonical columns + per-row problems).
        expect: store metadata every store must match (e.g. ``checkpoint_4k_sha256``).
        check_strata: patient-level check (e.g. classes too small for the folds).
    """
    df = read_csv(csv)
    problems = check_ids(df)
    if problems and not {"slide_id", "patient_id"} <= set(df.columns):
        raise CohortError(csv, problems)
    labels, label_problems = read_labels(df)
    problems += label_problems
    metas, paths, store_problems = check_stores(df, Path(features), dict(expect or {}))
    problems += store_problems
    # Patients are formed from every row with readable ids and labels, so that conflicts and
    # class sizes describe the labels as written even when a row's store is broken.
    label_bad = {r for p in label_problems for r in p.rows}
    label_bad |= set(rows_of(df.index[df["slide_id"].isna() | df["patient_id"].isna()]))
    labelled = df.assign(**{c: labels[c] for c in labels.columns})
    labelled = labelled[[row_number(i) not in label_bad for i in labelled.index]]
    patients, conflict_problems = group_patients(labelled, list(labels.columns), df)
    problems += conflict_problems
    if check_strata is not None and not patients.empty:
        problems += check_strata(patients)
    if problems:
        raise CohortError(csv, problems)
    if patients.empty:
        raise CohortError(csv, [Problem([], "no usable rows")])
    slides = pd.DataFrame(
        {
            "slide_id": df.loc[list(paths), "slide_id"].to_numpy(),
            "patient_id": df.loc[list(paths), "patient_id"].to_numpy(),
            "row": [row_number(i) for i in paths],
            "store": [str(paths[i]) for i in paths],
        }
    )
    meta = metas[min(metas)]
    log.info("cohort %s: %d slides, %d patients", csv, len(slides), len(patients))
    return Cohort(slides=slides, patients=patients, meta=meta)
