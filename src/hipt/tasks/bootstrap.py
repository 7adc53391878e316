"""Patient-level bootstrap intervals of a task's metrics."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from torch import Tensor

#: ``(outputs, target) -> {metric: value}``, e.g. ``Task.score``.
Scorer = Callable[[dict[str, np.ndarray], Tensor], dict[str, float]]


def bootstrap_metrics(
    score: Scorer,
    outputs: dict[str, np.ndarray],
    target: Tensor,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Every metric of ``score`` with a percentile bootstrap interval over patients.

    Patients are resampled with replacement ``n_boot`` times (rows of ``outputs`` and
    ``target`` together); a resample where a metric is undefined (one class only, no
    comparable pair) is left out of that metric's interval, and ``n_valid`` says how many
    counted.

    Args:
        score: the task's scorer.
        outputs: per-patient prediction columns (``[N]`` each).
        target: ``[N, ...]`` targets.
        n_boot: bootstrap resamples (0: no intervals).
        level: coverage of the interval (0.95 -> 2.5th and 97.5th percentiles).
        seed: seed of the resampling.

    Returns:
        One row per metric: ``metric, value, ci_low, ci_high, n_valid``.
    """
    point = score(outputs, target)
    n = len(target)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in point}
    cols = {k: np.asarray(v) for k, v in outputs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined metrics of degenerate resamples are NaN
        for _ in range(n_boot if n > 1 else 0):
            idx = rng.integers(0, n, n)
            got = score({k: v[idx] for k, v in cols.items()}, target[idx])
            for k, v in got.items():
                if np.isfinite(v):
                    draws[k].append(float(v))
    tail = (1.0 - level) / 2.0 * 100.0
    rows = []
    for k, value in point.items():
        vals = np.asarray(draws[k])
        low, high = np.percentile(vals, [tail, 100.0 - tail]) if len(vals) else (np.nan, np.nan)
        rows.append(
            {
                "metric": k,
                "value": value,
                "ci_low": float(low),
                "ci_high": float(high),
                "n_valid": len(vals),
            }
        )
    return pd.DataFrame(rows)
