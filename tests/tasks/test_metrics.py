"""Our metric functions against scikit-learn and scikit-survival on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    average_precision_score,
    cohen_kappa_score,
    f1_score,
    roc_auc_score,
)
from sksurv.datasets import load_gbsg2, load_veterans_lung_cancer
from sksurv.exceptions import NoComparablePairException
from sksurv.metrics import concordance_index_censored

from hipt.tasks import metrics as M


def test_harrell_c_equals_sksurv_on_veterans_lung_cancer():
    """On the real VA lung-cancer data (many tied Karnofsky scores and tied times), our
    Harrell's C equals sksurv's concordance_index_censored for several risk scores."""
    X, y = load_veterans_lung_cancer()
    event, time = y["Status"], y["Survival_in_days"]
    for risk in (
        -X["Karnofsky_score"].to_numpy(float),
        X["Age_in_years"].to_numpy(float),
        X["Months_from_Diagnosis"].to_numpy(float),
    ):
        want = concordance_index_censored(event, time, risk, tied_tol=1e-8)[0]
        assert M.harrell_c(time, event, risk) == pytest.approx(want, abs=1e-12)


def test_harrell_c_equals_sksurv_on_gbsg2():
    """Same on the GBSG2 breast-cancer data (686 patients, censoring ~56%)."""
    X, y = load_gbsg2()
    event, time = y["cens"], y["time"]
    risk = X["pnodes"].to_numpy(float) - 0.01 * X["progrec"].to_numpy(float)
    want = concordance_index_censored(event, time, risk)[0]
    assert M.harrell_c(time, event, risk) == pytest.approx(want, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 40), st.integers(0, 10_000))
def test_harrell_c_equals_sksurv_with_heavy_ties(n, seed):
    """Random data with integer times and risks (ties in both) still match sksurv exactly."""
    rng = np.random.default_rng(seed)
    time = rng.integers(1, 6, n).astype(float)
    event = rng.random(n) < 0.6
    risk = rng.integers(0, 4, n).astype(float)
    if not event.any():
        event[0] = True
    try:
        with np.errstate(invalid="ignore"):
            want = concordance_index_censored(event, time, risk)[0]  # NaN: no comparable pair
    except NoComparablePairException:
        want = np.nan
    got = M.harrell_c(time, event, risk)
    assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, abs=1e-12)


def test_classification_metrics_equal_sklearn():
    """AUROC (binary and macro one-vs-rest), AUPRC, macro F1 and quadratic kappa (computed with
    torchmetrics) equal scikit-learn's on random predictions."""
    rng = np.random.default_rng(0)
    for c in (2, 3, 5):
        y = rng.integers(0, c, 200)
        logits = rng.normal(size=(200, c)) + 1.5 * np.eye(c)[y] * rng.random((200, 1))
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        pred = probs.argmax(1)
        if c == 2:
            assert M.auroc_binary(probs[:, 1], y) == pytest.approx(roc_auc_score(y, probs[:, 1]))
            assert M.auprc_binary(probs[:, 1], y) == pytest.approx(
                average_precision_score(y, probs[:, 1])
            )
        want_auc = (
            roc_auc_score(y, probs, multi_class="ovr", average="macro")
            if c > 2
            else (roc_auc_score(y, probs[:, 1]))
        )
        assert M.auroc_macro_ovr(probs, y) == pytest.approx(want_auc, rel=1e-6)
        assert M.f1_macro(pred, y, c) == pytest.approx(f1_score(y, pred, average="macro"))
        assert M.quadratic_kappa(pred, y, c) == pytest.approx(
            cohen_kappa_score(y, pred, weights="quadratic", labels=list(range(c))), abs=1e-6
        )


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present():
    """Closed form: recalls 2/3 (class 0) and 1/1 (class 1) average to 5/6; a predicted class
    absent from the labels only lowers the recall of the true class; one class present scores
    its recall; no patients give NaN."""
    assert M.balanced_accuracy(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])) == pytest.approx(
        5 / 6
    )
    assert M.balanced_accuracy(np.array([0, 2, 1, 1]), np.array([0, 0, 1, 1])) == pytest.approx(
        0.75
    )
    assert M.balanced_accuracy(np.array([1, 1, 0]), np.array([1, 1, 1])) == pytest.approx(2 / 3)
    assert np.isnan(M.balanced_accuracy(np.array([]), np.array([])))


def test_undefined_metrics_are_nan_not_errors():
    """A part with one class has no AUROC: NaN (official NaN-skipping), not an exception."""
    assert np.isnan(M.auroc_binary(np.array([0.1, 0.9]), np.array([1, 1])))
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])
    y = np.array([0, 1, 1])  # class 2 absent: skipped
    want = np.mean([roc_auc_score(y == 0, probs[:, 0]), roc_auc_score(y == 1, probs[:, 1])])
    assert M.auroc_macro_ovr(probs, y) == pytest.approx(want)
    assert np.isnan(M.harrell_c(np.array([1.0, 2.0]), np.array([0, 0]), np.array([0.0, 1.0])))
