"""Evaluation metrics: torchmetrics and scikit-learn for classification, Harrell's C (survival)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    multiclass_cohen_kappa,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

NAN = float("nan")


def _t(x: np.ndarray | Tensor, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def auroc_binary(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``y`` in {0, 1}; NaN with a single class."""
    y = np.asarray(y).astype(int)
    if len(y) == 0 or y.min() == y.max():
        return NAN
    return float(binary_auroc(_t(scores, torch.float64), _t(y, torch.long)))


def auprc_binary(scores: np.ndarray, y: np.ndarray) -> float:
    """Average precision (area under precision-recall) of ``scores``; NaN without positives."""
    y = np.asarray(y).astype(int)
    if y.sum() == 0:
        return NAN
    return float(binary_average_precision(_t(scores, torch.float64), _t(y, torch.long)))


def auroc_macro_ovr(probs: np.ndarray, y: np.ndarray) -> float:
    """Macro one-vs-rest AUROC over the classes present (the official 3-class RCC metric).

    Classes with no positive or no negative among ``y`` are skipped, as the official code's
    NaN-skipping mean does. For two classes this equals the binary AUROC of ``probs[:, 1]``.

    Args:
        probs: ``[N, C]`` class probabilities.
        y: ``[N]`` class indices.
    """
    probs, y = np.asarray(probs), np.asarray(y).astype(int)
    per_class = [auroc_binary(probs[:, c], y == c) for c in range(probs.shape[1])]
    valid = [v for v in per_class if not math.isnan(v)]
    return float(np.mean(valid)) if valid else NAN


def confusion(pred: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """``[C, C]`` counts, rows = true class, columns = predicted class."""
    cm = multiclass_confusion_matrix(_t(pred, torch.long), _t(y, torch.long), n_classes)
    return cm.numpy()


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` (scikit-learn's ``balanced_accuracy_score``).

    A predicted class that never occurs in ``y`` counts against the others' recall only, and a
    fold with one class present scores that class's recall; scikit-learn's warnings about both
    are expected here and silenced.
    """
    if len(y) == 0:
        return NAN
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")
        return float(
            balanced_accuracy_score(np.asarray(y).astype(int), np.asarray(pred).astype(int))
        )


def f1_macro(pred: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """Macro F1 over classes that occur in ``y`` or in ``pred``."""
    return float(multiclass_f1_score(_t(pred, torch.long), _t(y, torch.long), n_classes, "macro"))


def quadratic_kappa(pred: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """Cohen's kappa with quadratic weights on the ordinal class indices ``0..C-1``."""
    if len(y) == 0:
        return NAN
    kappa = multiclass_cohen_kappa(
        _t(pred, torch.long), _t(y, torch.long), n_classes, weights="quadratic"
    )
    return float(kappa)


def harrell_c(
    time: np.ndarray, event: np.ndarray, risk: np.ndarray, tied_tol: float = 1e-8
) -> float:
    """Harrell's concordance index, identical to sksurv's ``concordance_index_censored``.

    A pair (i, j) is comparable when i had the event and ``time_j > time_i``, or
    ``time_j == time_i`` and j is censored. It is concordant when ``risk_i > risk_j`` and counts
    one half when ``|risk_i - risk_j| <= tied_tol``. Vectorised over blocks of i.

    Args:
        time: ``[N]`` follow-up times.
        event: ``[N]`` 1 = event observed, 0 = censored.
        risk: ``[N]`` predicted risk (higher = earlier event).
        tied_tol: risk difference below which two risks count as tied.

    Returns:
        The C-index, or NaN when no pair is comparable.
    """
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event).astype(bool)
    risk = np.asarray(risk, dtype=np.float64)
    if not (time.shape == event.shape == risk.shape) or time.ndim != 1:
        raise ValueError("time, event and risk must be 1-D arrays of one length")
    num = 0.0
    den = 0
    idx = np.flatnonzero(event)
    for start in range(0, len(idx), 1024):
        i = idx[start : start + 1024]
        ti, ri = time[i, None], risk[i, None]  # [B, 1] against all j [1, N]
        comparable = (time[None, :] > ti) | ((time[None, :] == ti) & ~event[None, :])
        ties = np.abs(risk[None, :] - ri) <= tied_tol
        concordant = (risk[None, :] < ri) & ~ties
        num += float((comparable & concordant).sum()) + 0.5 * float((comparable & ties).sum())
        den += int(comparable.sum())
    return num / den if den else NAN
