"""The report's numbers: fold means, pooled shuffled-label controls, the target check."""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd
import pytest

from hipt.demo.report import CONTROL, fold_stat, results_rows


def _summary(folder: Path, values: list[float], metric: str = "auroc") -> Path:
    """A finetune summary.csv: one row per fold, then mean and std rows (which must be skipped)."""
    folder.mkdir(parents=True)
    rows = [{"fold": str(k), metric: v} for k, v in enumerate(values)]
    rows += [{"fold": "mean", metric: 99.0}, {"fold": "std", metric: 99.0}]
    pd.DataFrame(rows).to_csv(folder / "summary.csv", index=False)
    return folder / "summary.csv"


def test_controls_pool_every_fold_of_every_permutation(tmp_path):
    a = _summary(tmp_path / "a", [0.4, 0.6])
    b = _summary(tmp_path / "b", [0.5, 0.7, 0.3])
    mean, std, n = fold_stat([a, b], "auroc")
    assert n == 5 and mean == pytest.approx(0.5)
    assert std == pytest.approx(statistics.stdev([0.4, 0.6, 0.5, 0.7, 0.3]))
    assert fold_stat([a], "c_index")[2] == 0  # metric absent
    assert fold_stat([tmp_path / "missing.csv"], "auroc")[2] == 0


def test_rows_name_the_headline_its_controls_and_the_other_models(tmp_path):
    ft = tmp_path / "finetune"
    _summary(ft / "hipt_lgp" / "subtype", [1.0, 0.9])
    for k, values in enumerate(([0.4, 0.5], [0.6, 0.5], [0.5, 0.5]), start=1):
        _summary(ft / "hipt_lgp" / f"subtype-shuffled-{k}", values)
    _summary(ft / "abmil" / "subtype", [0.8, 0.8])
    _summary(ft / "hipt_lgp" / "survival", [0.6, 0.6], metric="c_index")
    table = results_rows(tmp_path, ["subtype", "survival"], ["hipt_lgp", "abmil"])
    rows = {(r["task"], r["metric"]): r for r in table}
    sub = rows[("subtype", "AUROC")]
    assert sub["hipt_lgp"] == "0.950 ± 0.071" and sub["met"] == "yes"
    assert sub[CONTROL] == "0.500 ± 0.063 (3 x 2)"
    assert sub["abmil"] == "0.800 ± 0.000"
    surv = rows[("survival", "C-index")]
    assert surv["met"] == "NO" and surv[CONTROL] == "n/a" and surv["abmil"] == "n/a"
