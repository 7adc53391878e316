"""Prediction plots: ROC curves, pooled confusion matrix, Kaplan-Meier of risk groups."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import auc, roc_curve  # noqa: E402

from hipt.io import atomic_output  # noqa: E402
from hipt.tasks.km import kaplan_meier, logrank_test  # noqa: E402
from hipt.tasks.metrics import confusion  # noqa: E402

if TYPE_CHECKING:
    from hipt.tasks.base import Task

log = logging.getLogger(__name__)


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def roc_plot(
    frames: Sequence[pd.DataFrame], score_cols: Sequence[str], names: Sequence[str], path: Path
) -> Path:
    """One panel per class (one-vs-rest; a single panel for binary tasks), one curve per fold.

    Args:
        frames: test predictions of each fold (``label_index`` + score columns).
        score_cols: score column of each panel's positive class.
        names: class of each panel (for binary tasks: the positive class).
        path: PNG to write.
    """
    binary = len(score_cols) == 1
    fig, axes = plt.subplots(1, len(score_cols), figsize=(4.2 * len(score_cols), 4), squeeze=False)
    for j, (col, name) in enumerate(zip(score_cols, names, strict=True)):
        ax = axes[0, j]
        positive = 1 if binary else j
        for k, frame in enumerate(frames):
            y = frame["label_index"].to_numpy() == positive
            if y.all() or not y.any():
                continue
            fpr, tpr, _ = roc_curve(y, frame[col].to_numpy())
            ax.plot(fpr, tpr, lw=1.2, label=f"fold {k} (AUC {auc(fpr, tpr):.3f})")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(
            title=f"{name} vs rest" if not binary else name,
            xlabel="false positive rate",
            ylabel="true positive rate",
            xlim=(0, 1),
            ylim=(0, 1.01),
        )
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def confusion_plot(cm: np.ndarray, names: Sequence[str], path: Path) -> Path:
    """Confusion matrix (rows = true, columns = predicted) of the pooled test folds."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(names), 0.8 + 0.8 * len(names)))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color=color)
    ticks = range(len(names))
    ax.set(
        xticks=ticks,
        yticks=ticks,
        xticklabels=names,
        yticklabels=names,
        xlabel="predicted",
        ylabel="true",
        title="test folds (pooled)",
    )
    return _save(fig, path)


def risk_groups(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Pooled test predictions with ``high_risk`` = risk above its own fold's median.

    Risks of different folds come from different models, so each fold is split at its own
    median rather than at a pooled threshold.
    """
    parts = []
    for frame in frames:
        f = frame[["time", "event", "risk"]].copy()
        f["high_risk"] = f["risk"] > f["risk"].median()
        parts.append(f)
    return pd.concat(parts, ignore_index=True)


def km_plot(frames: Sequence[pd.DataFrame], path: Path) -> tuple[Path, float]:
    """Kaplan-Meier curves of predicted high vs low risk with the log-rank p-value.

    Returns:
        ``(path, p_value)``.
    """
    pooled = risk_groups(frames)
    t, e, g = pooled["time"].to_numpy(), pooled["event"].to_numpy(), pooled["high_risk"].to_numpy()
    _, p = logrank_test(t, e, g)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for flag, name, color in ((False, "low risk", "tab:blue"), (True, "high risk", "tab:red")):
        sel = g == flag
        if sel.any():
            kt, ks = kaplan_meier(t[sel], e[sel])
            ax.step(kt, ks, where="post", color=color, label=f"{name} (n={int(sel.sum())})")
            cens = sel & (e == 0)
            at = ks[np.searchsorted(kt, t[cens], side="right") - 1]
            ax.plot(t[cens], at, "|", color=color, ms=6)
    ax.set(
        xlabel="time",
        ylabel="survival probability",
        ylim=(0, 1.02),
        title=f"test folds, split at each fold's median risk; log-rank p = {p:.2g}",
    )
    ax.legend()
    return _save(fig, path), p


def task_plots(task: Task, frames: Sequence[pd.DataFrame], out: Path, what: str) -> dict[str, Path]:
    """The task's plots of prediction frames (one per fold, or one for an ensemble).

    ROC curves and the pooled confusion matrix (classification), or Kaplan-Meier curves of the
    high and low predicted-risk halves with the log-rank p (survival).

    Args:
        task: the fitted task.
        frames: prediction tables with the truth columns (``label_index`` or ``time/event``).
        out: folder of ``roc.png``, ``confusion.png``, ``km.png``.
        what: what the frames are, for the log (e.g. ``"test folds"``).
    """
    made: dict[str, Path] = {}
    if "roc" in task.plots:
        cols, names = task.roc_columns()
        made["roc"] = roc_plot(frames, cols, names, out / "roc.png")
    if "confusion" in task.plots:
        pooled = pd.concat(frames, ignore_index=True)
        pred = pooled["pred"].astype(str).map({c: i for i, c in enumerate(task.classes)})
        cm = confusion(pred.to_numpy(), pooled["label_index"].to_numpy(), len(task.classes))
        made["confusion"] = confusion_plot(cm, task.classes, out / "confusion.png")
    if "km" in task.plots:
        made["km"], p = km_plot(frames, out / "km.png")
        log.info("Kaplan-Meier high vs low predicted risk (%s): log-rank p = %.3g", what, p)
    return made
