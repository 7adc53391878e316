"""Survival units: NLL vs pycox and MCAT's formula, bins, risk, EvalSurv, KM and log-rank."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test as lifelines_logrank
from pycox.models.loss import nll_logistic_hazard
from sksurv.datasets import load_veterans_lung_cancer

from hipt.errors import HiptError
from hipt.tasks.km import kaplan_meier, logrank_test
from hipt.tasks.survival import (
    discretize,
    ensure_scipy_simps,
    eval_surv_metrics,
    quantile_bin_edges,
    risk_score,
    survival_curves,
    survival_nll,
)


def mcat_nll(logits, y, c, alpha=0.0, eps=1e-7):
    """MCAT's nll_loss written from reference/hipt.md 7 (censorship c = 1 - event)."""
    h = torch.sigmoid(logits)
    s = torch.cumprod(1 - h, 1)
    s_pad = torch.cat([torch.ones_like(c[:, None]), s], 1)
    y = y[:, None]
    unc = -(1 - c[:, None]) * (
        torch.log(s_pad.gather(1, y).clamp_min(eps)) + torch.log(h.gather(1, y).clamp_min(eps))
    )
    cen = -c[:, None] * torch.log(s_pad.gather(1, y + 1).clamp_min(eps))
    total = unc + cen
    return ((1 - alpha) * total + alpha * unc).mean()


def test_nll_equals_pycox_and_mcat_on_random_inputs():
    """Our loss equals pycox's nll_logistic_hazard and MCAT's hazard/survival formula."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 4, generator=g, dtype=torch.float64)
    bins = torch.randint(0, 4, (64,), generator=g)
    events = (torch.rand(64, generator=g) < 0.6).double()
    ours = survival_nll(logits, bins, events)
    assert ours.item() == pytest.approx(nll_logistic_hazard(logits, bins, events).item(), rel=1e-12)
    assert ours.item() == pytest.approx(mcat_nll(logits, bins, 1 - events).item(), rel=1e-6)
    for alpha in (0.15, 0.4):
        want = mcat_nll(logits, bins, 1 - events, alpha).item()
        assert survival_nll(logits, bins, events, alpha).item() == pytest.approx(want, rel=1e-6)


def test_bins_are_quantiles_of_uncensored_times_and_left_closed():
    """Edges = quartiles of uncensored times only; intervals are [a, b) like pd.cut(right=False)."""
    time = np.array([1, 2, 3, 4, 5, 6, 7, 8, 100, 200], float)
    event = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    edges = quantile_bin_edges(time, event, 4)
    np.testing.assert_allclose(edges, np.quantile(time[:8], [0.25, 0.5, 0.75]))
    full = np.concatenate([[-np.inf], edges, [np.inf]])
    want = pd.cut(time, full, right=False, labels=False)
    np.testing.assert_array_equal(discretize(time, edges), want)
    assert discretize(np.array([edges[0]]), edges)[0] == 1
    with pytest.raises(HiptError, match="uncensored"):
        quantile_bin_edges(time, np.zeros(10), 4)


def test_risk_is_minus_sum_of_survival():
    """risk = -sum_k prod_{i<=k} (1 - sigmoid(logit_i)); more hazard => more risk."""
    logits = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    s = survival_curves(logits)
    torch.testing.assert_close(s[0], torch.tensor([0.5, 0.25]))
    assert risk_score(logits)[0] == pytest.approx(-0.75)
    assert risk_score(logits)[1] > risk_score(logits)[0]


def test_evalsurv_runs_with_current_scipy_and_antolini_is_sane():
    """pycox's IBS needs scipy.integrate.simps (removed in SciPy 1.14): our compat alias makes it
    work; a perfectly ordered prediction gets Antolini C 1 and a reversed one 0."""
    import scipy.integrate

    ensure_scipy_simps()
    assert scipy.integrate.simps is scipy.integrate.simpson or hasattr(scipy.integrate, "simps")
    time = np.array([5.0, 15.0, 25.0, 35.0, 45.0, 55.0])
    event = np.ones(6, int)
    edges = np.array([20.0, 40.0])
    good = np.cumprod(np.linspace(0.1, 0.9, 6)[:, None].repeat(3, 1), 1)  # early death = low S
    out = eval_surv_metrics(good, edges, 60.0, time, event)
    assert out["c_index_td"] == pytest.approx(1.0)
    assert 0 <= out["ibs"] <= 0.5
    assert eval_surv_metrics(good[::-1], edges, 60.0, time, event)["c_index_td"] == pytest.approx(0)


def test_kaplan_meier_and_logrank_equal_lifelines():
    """KM curve and log-rank p-value equal lifelines' on the veterans data split by cell type."""
    X, y = load_veterans_lung_cancer()
    time, event = y["Survival_in_days"], y["Status"].astype(int)
    group = (X["Celltype"] == "squamous").to_numpy() | (X["Celltype"] == "large").to_numpy()
    t, s = kaplan_meier(time, event)
    km = KaplanMeierFitter().fit(time, event)
    np.testing.assert_allclose(s, km.survival_function_at_times(t).to_numpy(), atol=1e-12)
    stat, p = logrank_test(time, event, group)
    ref = lifelines_logrank(time[group], time[~group], event[group], event[~group])
    assert stat == pytest.approx(ref.test_statistic, rel=1e-9)
    assert p == pytest.approx(ref.p_value, rel=1e-9)
