"""Discrete-time survival (MCAT/HIPT recipe): quantile bins, logistic-hazard NLL, risk, metrics."""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.integrate
import torch
from pycox.models.loss import nll_logistic_hazard
from torch import Tensor

from hipt.cohort import Problem, is_missing, rows_of
from hipt.errors import HiptError
from hipt.tasks import metrics as M
from hipt.tasks.base import TASKS, Task

log = logging.getLogger(__name__)

#: (time, event) column pairs tried in order; TCGA/MCAT CSVs use censorship = 1 - event.
COLUMN_PAIRS = (("time", "event"), ("survival_months", "censorship"))


def quantile_bin_edges(time: np.ndarray, event: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner bin edges: quantiles of the event times of uncensored patients (MCAT ``qcut``).

    Args:
        time: training patients' times.
        event: 1 = event observed.
        n_bins: number of bins.

    Returns:
        ``n_bins - 1`` increasing edges; bin k is ``[edge_{k-1}, edge_k)`` with open ends.

    Raises:
        HiptError: fewer uncensored patients than bins, or tied edges.
    """
    times = np.asarray(time, float)[np.asarray(event).astype(bool)]
    if len(times) < n_bins:
        raise HiptError(
            f"only {len(times)} uncensored training patients for {n_bins} survival bins; "
            "use fewer target.n_bins or fewer folds"
        )
    edges = np.quantile(times, np.linspace(0, 1, n_bins + 1)[1:-1])
    if np.any(np.diff(edges) <= 0):
        raise HiptError(f"survival bin edges tie ({edges.tolist()}); use fewer target.n_bins")
    return edges


def discretize(time: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each time (``right=False`` intervals, as ``pd.cut(..., right=False)``)."""
    return np.searchsorted(edges, np.asarray(time, float), side="right").astype(np.int64)


def survival_nll(logits: Tensor, bins: Tensor, events: Tensor, alpha: float = 0.0) -> Tensor:
    """Pycox's logistic-hazard NLL, optionally up-weighting uncensored patients (MCAT alpha).

    ``loss = (1 - alpha) * nll + alpha * nll * event`` (MCAT's ``nll_loss``; alpha = 0 is the
    official setting, where it is exactly pycox's ``nll_logistic_hazard``).

    Args:
        logits: ``[B, n_bins]`` hazard logits (hazard = sigmoid).
        bins: ``[B]`` time-bin index.
        events: ``[B]`` 1 = event, 0 = censored.
        alpha: weight of the uncensored-only term.
    """
    events = events.to(logits.dtype)
    per = nll_logistic_hazard(logits, bins.long(), events, reduction="none")
    return ((1.0 - alpha) * per + alpha * per * events).mean()


def survival_curves(logits: Tensor) -> Tensor:
    """``S_k = prod_{i<=k} (1 - sigmoid(logit_i))``: survival past bin k, ``[N, n_bins]``."""
    return torch.cumprod(1.0 - torch.sigmoid(logits), dim=1)


def risk_score(logits: Tensor) -> Tensor:
    """MCAT/HIPT risk ``-sum_k S_k`` (higher = earlier death)."""
    return -survival_curves(logits).sum(1)


def ensure_scipy_simps() -> None:
    """Pycox 0.3.0 calls ``scipy.integrate.simps``, removed in SciPy 1.14 (havakv/pycox#182)."""
    if not hasattr(scipy.integrate, "simps"):
        scipy.integrate.simps = scipy.integrate.simpson  # type: ignore[attr-defined]


def eval_surv_metrics(
    surv: np.ndarray, edges: np.ndarray, t_max: float, time: np.ndarray, event: np.ndarray
) -> dict[str, float]:
    """Antolini's time-dependent C and the integrated Brier score via pycox's ``EvalSurv``.

    Survival is evaluated at the patients' own times (see :func:`interpolated_survival`).
    Brier scores use Kaplan-Meier censoring weights of the evaluated patients, averaged over
    100 times between their 5th and 95th time percentiles.
    """
    from pycox.evaluation import EvalSurv

    ensure_scipy_simps()
    time = np.asarray(time, float)
    event = np.asarray(event, int)
    if len(time) < 2 or event.sum() == 0:
        return {"c_index_td": M.NAN, "ibs": M.NAN}
    frame = interpolated_survival(surv, edges, t_max, np.unique(np.concatenate([[0.0], time])))
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore")
            ev = EvalSurv(frame, time, event, censor_surv="km")
            td = float(ev.concordance_td("antolini"))
            lo, hi = np.percentile(time, [5, 95])
            ibs = float(ev.integrated_brier_score(np.linspace(lo, hi, 100))) if hi > lo else M.NAN
    finally:
        # pycox's numba kernels start an OpenMP pool that can reset torch's thread count.
        torch.set_num_threads(threads)
    return {"c_index_td": td, "ibs": ibs if math.isfinite(ibs) else M.NAN}


def interpolated_survival(
    surv: np.ndarray, edges: np.ndarray, t_max: float, times: np.ndarray
) -> pd.DataFrame:
    """Survival of each patient at ``times`` (rows) as pycox wants it (columns = patients).

    The knots are ``S = 1`` at time 0 and ``S_k`` at the end of bin k (inner edges, then the
    largest training time ``t_max``); between knots survival falls linearly (constant density
    within a bin, pycox's ``const_pdf`` interpolation) and stays at ``S_last`` after ``t_max``.
    Without interpolation every patient has ``S = 1`` inside the first bin and Antolini's C
    would count those pairs as ties.
    """
    knots = np.concatenate([[0.0], edges, [max(t_max, edges[-1] + 1e-6)]])
    values = np.concatenate([np.ones((surv.shape[0], 1)), surv], 1)
    grid = np.array([np.interp(times, knots, row) for row in values]).T
    return pd.DataFrame(grid, index=times)


@TASKS.register("survival")
class SurvivalTask(Task):
    """Overall survival: logistic-hazard NLL on quantile bins; Harrell's C, Antolini C, IBS."""

    name = "survival"
    default_monitor = "val/c_index"
    label_columns = ("time", "event")
    plots = ("km",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.edges: np.ndarray | None = None
        self.t_max = 0.0

    def _columns(self, df: pd.DataFrame) -> tuple[str, str, bool] | None:
        for t, e in COLUMN_PAIRS:
            if t in df.columns and e in df.columns:
                return t, e, e == "censorship"
        return None

    def label_source(self, df: pd.DataFrame) -> list[str]:
        """The time and event (or censorship) columns, when the table has both."""
        cols = self._columns(df)
        return [] if cols is None else [cols[0], cols[1]]

    def read_labels(self, df: pd.DataFrame) -> tuple[pd.DataFrame, list[Problem]]:
        """``time`` (>= 0) and ``event`` (0/1) per row; censorship columns are inverted."""
        cols = self._columns(df)
        out = pd.DataFrame(index=df.index, columns=["time", "event"], dtype=float)
        if cols is None:
            return out, [
                Problem(
                    [],
                    "missing survival columns: need time + event or "
                    f"survival_months + censorship (have: {', '.join(df.columns)})",
                )
            ]
        tcol, ecol, censorship = cols
        problems = []
        for col in (tcol, ecol):
            miss = df.index[df[col].map(is_missing)]
            if len(miss):
                problems.append(Problem(rows_of(miss), f"missing {col}"))
        time = pd.to_numeric(df[tcol], errors="coerce")
        flag = pd.to_numeric(df[ecol], errors="coerce")
        bad_t = df.index[time.isna() & ~df[tcol].map(is_missing)]
        if len(bad_t):
            problems.append(Problem(rows_of(bad_t), f"{tcol} is not a number"))
        neg = df.index[time < 0]
        if len(neg):
            problems.append(Problem(rows_of(neg), f"negative {tcol}"))
        bad_e = df.index[~flag.isin([0, 1]) & ~df[ecol].map(is_missing)]
        if len(bad_e):
            problems.append(Problem(rows_of(bad_e), f"{ecol} must be 0 or 1"))
        out["time"] = time.where(time >= 0)
        out["event"] = (1 - flag if censorship else flag).where(flag.isin([0, 1]))
        self.classes = [f"bin_{k}" for k in range(self.cfg.n_bins)]
        return out, problems

    def strata(self, patients: pd.DataFrame) -> np.ndarray:
        """Event status (the folds keep the event rate)."""
        return patients["event"].to_numpy().astype(int)

    def check_strata(self, patients: pd.DataFrame, n_folds: int) -> list[Problem]:
        """Every test fold needs events for a C-index."""
        n_events = int(patients["event"].sum())
        if n_events < n_folds:
            rows = sorted(r for rs in patients.loc[patients["event"] == 1, "rows"] for r in rs)
            return [
                Problem(
                    rows,
                    f"only {n_events} patient(s) with an event, fewer than the "
                    f"{n_folds} folds requested",
                )
            ]
        return []

    def fit(self, train: pd.DataFrame) -> None:
        """Bin edges from the uncensored training patients (no test information)."""
        self.edges = quantile_bin_edges(train["time"], train["event"], self.cfg.n_bins)
        self.t_max = float(train["time"].max())

    @property
    def n_outputs(self) -> int:
        """One hazard logit per bin."""
        return self.cfg.n_bins

    def _edges(self) -> np.ndarray:
        if self.edges is None:
            raise HiptError("survival bins are not set; call fit(train) first")
        return self.edges

    def _bins(self, time: np.ndarray) -> np.ndarray:
        """Time bin per patient; -1 when the bins are not known (an official HIPT model)."""
        if self.edges is None and self.fixed:
            return np.full(len(time), -1, dtype=np.int64)
        return discretize(time, self._edges())

    def targets(self, patients: pd.DataFrame) -> Tensor:
        """``[N, 3]``: bin index, event, time."""
        time = patients["time"].to_numpy(float)
        bins = self._bins(time)
        return torch.as_tensor(np.stack([bins, patients["event"].to_numpy(float), time], 1))

    def sample_labels(self, patients: pd.DataFrame) -> np.ndarray:
        """(bin, event) pairs, as MCAT's sampler."""
        bins = discretize(patients["time"].to_numpy(float), self._edges())
        return bins * 2 + patients["event"].to_numpy().astype(int)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Logistic-hazard NLL."""
        return survival_nll(logits, target[:, 0], target[:, 1], self.cfg.alpha)

    def outputs(self, logits: Tensor) -> dict[str, np.ndarray]:
        """``risk``, per-bin ``hazard_k`` and ``surv_k`` columns."""
        logits = logits.double()
        haz, surv = torch.sigmoid(logits).numpy(), survival_curves(logits).numpy()
        out: dict[str, Any] = {"risk": risk_score(logits).numpy()}
        out.update({f"hazard_{k}": haz[:, k] for k in range(haz.shape[1])})
        out.update({f"surv_{k}": surv[:, k] for k in range(surv.shape[1])})
        return out

    def headline(self, outputs: dict[str, np.ndarray]) -> tuple[str, float]:
        """The predicted risk (higher: earlier event)."""
        risk = float(outputs["risk"][0])
        return f"risk {risk:.3f}", risk

    def score(self, outputs: dict[str, np.ndarray], target: Tensor) -> dict[str, float]:
        """Harrell's C (sksurv-identical), Antolini's C and IBS (pycox EvalSurv).

        The last two need the bins' time edges; a model that does not carry them (an official
        HIPT file) gets NaN there.
        """
        target = target.double()
        event, time = target[:, 1].numpy().astype(int), target[:, 2].numpy()
        risk = np.asarray(outputs["risk"], float)
        out = {"c_index": M.harrell_c(time, event, risk) if len(time) else M.NAN}
        if self.edges is None:
            return {**out, "c_index_td": M.NAN, "ibs": M.NAN}
        surv = np.stack([np.asarray(outputs[f"surv_{k}"], float) for k in range(self.n_outputs)], 1)
        out.update(eval_surv_metrics(surv, self.edges, self.t_max, time, event))
        return out

    def val_metrics(self, logits: Tensor, target: Tensor) -> dict[str, float]:
        """Harrell's C only (EvalSurv every epoch would cost more than the epoch)."""
        event, time = target[:, 1].numpy().astype(int), target[:, 2].numpy()
        risk = risk_score(logits.double()).numpy()
        return {"c_index": M.harrell_c(time, event, risk) if len(time) else M.NAN}

    def truth(self, patients: pd.DataFrame) -> dict[str, Any]:
        """Time, event and the time bin."""
        time = patients["time"].to_numpy(float)
        return {
            "time": time,
            "event": patients["event"].to_numpy().astype(int),
            "bin": self._bins(time),
        }

    def state(self) -> dict[str, Any]:
        """Task state incl. bin edges."""
        return {**super().state(), "bin_edges": self._edges().tolist(), "t_max": self.t_max}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore classes, bin edges and the largest training time (None when not known)."""
        super().load_state(state)
        edges = state.get("bin_edges")
        self.edges = None if edges is None else np.asarray(edges, dtype=float)
        self.t_max = float(state.get("t_max") or 0.0)
