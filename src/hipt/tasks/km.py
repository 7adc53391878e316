"""Kaplan-Meier estimator and the two-group log-rank test (numpy/scipy, no lifelines needed)."""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2


def _at_risk_table(
    time: np.ndarray, event: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct event times, events there and patients at risk just before them."""
    time = np.asarray(time, float)
    event = np.asarray(event).astype(bool)
    times = np.unique(time[event])
    deaths = np.array([np.sum(event & (time == t)) for t in times], dtype=float)
    at_risk = np.array([np.sum(time >= t) for t in times], dtype=float)
    return times, deaths, at_risk


def kaplan_meier(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier survival as a step function.

    Returns:
        ``(t, s)`` starting at ``(0, 1)``; ``s[i]`` holds from ``t[i]`` until ``t[i+1]``.
    """
    times, deaths, at_risk = _at_risk_table(time, event)
    surv = np.cumprod(1.0 - deaths / np.maximum(at_risk, 1))
    return np.concatenate([[0.0], times]), np.concatenate([[1.0], surv])


def logrank_test(time: np.ndarray, event: np.ndarray, group: np.ndarray) -> tuple[float, float]:
    """Log-rank test of equal survival in two groups (Mantel's hypergeometric variance).

    Args:
        time: follow-up times.
        event: 1 = event observed.
        group: boolean group membership (True = group 1).

    Returns:
        ``(chi-square statistic with 1 degree of freedom, p-value)``; NaN without events or
        with an empty group.
    """
    time = np.asarray(time, float)
    event = np.asarray(event).astype(bool)
    group = np.asarray(group).astype(bool)
    if group.all() or not group.any() or not event.any():
        return float("nan"), float("nan")
    times, d, n = _at_risk_table(time, event)
    d1 = np.array([np.sum(event & group & (time == t)) for t in times], dtype=float)
    n1 = np.array([np.sum(group & (time >= t)) for t in times], dtype=float)
    expected = d * n1 / n
    frac = n1 / n
    var = np.where(n > 1, d * frac * (1 - frac) * (n - d) / np.maximum(n - 1, 1), 0.0)
    total_var = float(var.sum())
    if total_var <= 0:
        return float("nan"), float("nan")
    stat = float((d1 - expected).sum() ** 2 / total_var)
    return stat, float(chi2.sf(stat, 1))
