"""Patient-level stratified folds: properties, reuse on disk, and official split CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hipt.errors import HiptError, StaleOutputError
from hipt.finetune.splits import load_or_make_folds, make_folds, read_official


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 25), min_size=1, max_size=4),
    k=st.integers(2, 5),
    frac=st.sampled_from([0.0, 0.1, 0.25]),
    seed=st.integers(0, 1000),
)
def test_fold_properties(counts, k, frac, seed):
    """Every fold holds each patient once; test folds are disjoint and cover everyone; each
    stratum's test count is floor or ceil of n_s / k; validation is carved per stratum within
    one patient of its proportional share, never taking a stratum's last training member."""
    counts = [max(c, k) for c in counts]
    strata = np.repeat(np.arange(len(counts)), counts)
    ids = [f"P{i}" for i in range(len(strata))]
    folds = make_folds(ids, strata, k, frac, seed)
    assert len(folds) == k
    tested = []
    for fold in folds:
        assert sorted(fold["patient_id"]) == sorted(ids)
        assert set(fold["part"]) <= {"train", "val", "test"}
        s = dict(zip(ids, strata, strict=True))
        fold = fold.assign(stratum=fold["patient_id"].map(s))
        test = fold[fold["part"] == "test"]
        tested += test["patient_id"].tolist()
        for value, n_s in enumerate(counts):
            n_test = int((test["stratum"] == value).sum())
            assert n_s // k <= n_test <= -(-n_s // k)
        trainval = fold[fold["part"] != "test"]
        n_val = int((fold["part"] == "val").sum())
        want = 0 if frac == 0 else min(max(1, round(frac * len(trainval))), len(trainval) - 1)
        spare = sum(max(c - 1, 0) for c in trainval["stratum"].value_counts())
        assert n_val == min(want, spare)  # every stratum keeps a training member
        for value in range(len(counts)):
            members = trainval[trainval["stratum"] == value]
            share = len(members) * n_val / len(trainval)
            assert abs((members["part"] == "val").sum() - share) < 1 + 1e-9
    assert sorted(tested) == sorted(ids)


def _patients(n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    patients = pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)]})
    slides = pd.DataFrame(
        {
            "slide_id": [f"P{i}-S{j}.svs" for i in range(n) for j in range(2)],
            "patient_id": [f"P{i}" for i in range(n) for _ in range(2)],
        }
    )
    return patients, slides


def test_folds_are_written_and_reused(tmp_path):
    """fold_<k>.csv are written once and read back unchanged; other settings are refused unless
    overwrite; a fold file that lost a patient is refused."""
    patients, slides = _patients(20)
    strata = np.arange(20) % 2
    folder = tmp_path / "splits"
    first = load_or_make_folds(folder, patients, slides, strata, 4, 0.1, 1)
    assert sorted(p.name for p in folder.iterdir()) == [
        "fold_0.csv",
        "fold_1.csv",
        "fold_2.csv",
        "fold_3.csv",
        "splits.json",
    ]
    again = load_or_make_folds(folder, patients, slides, strata, 4, 0.1, 1)
    for a, b in zip(first, again, strict=True):
        pd.testing.assert_frame_equal(a, b)
    with pytest.raises(StaleOutputError, match="other settings"):
        load_or_make_folds(folder, patients, slides, strata, 5, 0.1, 1)
    assert len(load_or_make_folds(folder, patients, slides, strata, 5, 0.1, 1, overwrite=True)) == 5
    pd.read_csv(folder / "fold_0.csv").iloc[1:].to_csv(folder / "fold_0.csv", index=False)
    with pytest.raises(StaleOutputError, match="does not fit"):
        load_or_make_folds(folder, patients, slides, strata, 5, 0.1, 1)


def _official(folder: Path, i: int, cols: dict[str, list[str]]) -> None:
    n = max(len(v) for v in cols.values())
    frame = pd.DataFrame({c: v + [None] * (n - len(v)) for c, v in cols.items()})
    folder.mkdir(exist_ok=True)
    frame.to_csv(folder / f"splits_{i}.csv")


def test_official_splits(tmp_path):
    """Official ragged train/val/test CSVs of slide ids (with .svs stripped or not) map to
    patients; a patient in two parts is an error or, with drop, kept in its evaluation part;
    MCAT-style train/val files evaluate on val; unknown ids are dropped."""
    patients, slides = _patients(6)
    ids = patients["patient_id"].tolist()
    off = tmp_path / "official"
    _official(
        off,
        0,
        {
            "train": ["P0-S0", "P1-S0.svs", "P2-S0", "P2-S1"],
            "val": ["P3-S0"],
            "test": ["P4-S0", "P5-S1", "P2-S1", "GONE"],
        },
    )
    with pytest.raises(HiptError, match="two parts"):
        read_official(off, slides, ids, "error")
    fold = read_official(off, slides, ids, "drop")[0].set_index("patient_id")["part"]
    assert fold.to_dict() == {
        "P0": "train",
        "P1": "train",
        "P3": "val",
        "P2": "test",
        "P4": "test",
        "P5": "test",
    }
    mcat = tmp_path / "mcat"
    _official(mcat, 0, {"train": ["P0", "P1", "P2"], "val": ["P3", "P4", "P5"]})
    fold = read_official(mcat, slides, ids, "error")[0]
    assert set(fold.loc[fold["part"] == "test", "patient_id"]) == {"P3", "P4", "P5"}
    assert (fold["part"] == "val").sum() == 0
