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


def test_external_rows_report_the_ensemble_with_its_interval(tmp_path):
    """The external cohort's rows: the ensemble's value and bootstrap interval per metric, the
    target check, and predict's time per patient; fold rows are not reported."""
    import json

    from hipt.demo.report import external_rows

    folder = tmp_path / "external" / "predict" / "survival"
    folder.mkdir(parents=True)
    pd.DataFrame([
        {"model": "ensemble", "metric": "c_index", "value": 0.8, "ci_low": 0.7, "ci_high": 0.9,
         "n_valid": 100, "n_patients": 60},
        {"model": "fold_0", "metric": "c_index", "value": 0.1, "ci_low": 0.0, "ci_high": 0.2,
         "n_valid": 100, "n_patients": 60},
    ]).to_csv(folder / "metrics.csv", index=False)  # fmt: skip
    (folder / "summary.json").write_text(json.dumps({"timing": {"seconds_per_patient": 0.0123}}))
    (row,) = external_rows(tmp_path, ["subtype", "survival"])
    assert row["ensemble [95% CI]"] == "0.800 [0.700, 0.900]" and row["met"] == "yes"
    assert row["patients"] == "60" and row["s per patient"] == "0.012"
