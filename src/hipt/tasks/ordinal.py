"""Ordinal stage prediction with a CORN head [0]: K-1 conditional binary logits per bag.

[0] Shi, Cao, Raschka. Deep neural networks for rank-consistent ordinal regression based on
    conditional probabilities. Pattern Analysis and Applications, 2023 (arXiv:2111.08851).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from hipt.tasks import metrics as M
from hipt.tasks.base import TASKS, Task

ROMAN = {"0": 0, "I": 1, "II": 2, "III": 3, "IV": 4}
_STAGE = re.compile(r"^(?:stage\s*)?([0IV]+|\d+)[A-C]?\d?$", re.IGNORECASE)


def corn_loss(logits: Tensor, y: Tensor) -> Tensor:
    """CORN loss: task k is "y > k", trained only on samples with ``y >= k``.

    Args:
        logits: ``[B, K-1]`` conditional logits.
        y: ``[B]`` ordinal class index in ``0..K-1``.

    Returns:
        Binary cross-entropy summed over the (sample, task) pairs in each task's subset and
        divided by the number of such pairs, as in the reference implementation.
    """
    k = torch.arange(logits.shape[1], device=logits.device)
    y = y.long().view(-1, 1)
    in_subset = (y >= k).to(logits.dtype)  # [B, K-1]
    label = (y > k).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, label, reduction="none")
    return (bce * in_subset).sum() / in_subset.sum().clamp_min(1)


def corn_cumulative(logits: Tensor) -> Tensor:
    """``P(y > k)`` for k = 0..K-2 (``[B, K-1]``; non-increasing in k by construction)."""
    return torch.cumprod(torch.sigmoid(logits), dim=1)


def corn_class_probs(logits: Tensor) -> Tensor:
    """Class probabilities ``[B, K]`` from CORN logits (differences of ``P(y > k)``)."""
    gt = corn_cumulative(logits)
    ones = torch.ones_like(gt[:, :1])
    zeros = torch.zeros_like(gt[:, :1])
    return torch.cat([ones, gt], 1) - torch.cat([gt, zeros], 1)


def corn_rank(logits: Tensor) -> Tensor:
    """Predicted class index: the number of tasks with ``P(y > k) > 0.5``."""
    return (corn_cumulative(logits) > 0.5).sum(1)


def parse_stage(value: str) -> int | None:
    """Stage number of a label, or None when it is not one.

    Accepts ``I``..``IV`` (any case, optional ``Stage`` prefix and A/B/C sub-stage) and
    non-negative integers.
    """
    m = _STAGE.match(value.strip())
    if not m:
        return None
    core = m.group(1).upper()
    if core.isdigit():
        return int(core)
    return ROMAN.get(core)


@TASKS.register("stage")
class StageTask(Task):
    """Tumour stage as an ordinal target: CORN loss; quadratic kappa, MAE, macro AUROC.

    Classes are the stage values found in the cohort, in increasing order; a stage missing from
    the cohort is not a class (the head has one logit fewer than the number of classes).
    """

    name = "stage"
    default_column = "stage"
    default_monitor = "val/qwk"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._roman = True

    def parse_value(self, value: str) -> Any | None:
        """Stage number (I-IV or integers)."""
        stage = parse_stage(value)
        if stage is not None and value.strip().isdigit():
            self._roman = False
        return stage

    def valid_values(self) -> str:
        """Accepted values."""
        return "I-IV (optionally 'Stage IIA' style) or non-negative integers"

    def encode(self, parsed: pd.Series, valid: pd.Index) -> pd.Series:
        """Rank of each stage among the stages present (or among a fitted model's stages)."""
        if self.fixed:
            lookup = {parse_stage(c): i for i, c in enumerate(self.classes)}
            return parsed.map(lambda v: np.nan if pd.isna(v) else lookup.get(int(v), np.nan))
        values = sorted({int(v) for v in parsed[valid]})
        inv = {v: k for k, v in ROMAN.items()}
        self.classes = [inv[v] if self._roman and v in inv else str(v) for v in values]
        lookup = {v: i for i, v in enumerate(values)}
        return parsed.map(lambda v: np.nan if pd.isna(v) else lookup[int(v)])

    @property
    def n_outputs(self) -> int:
        """K-1 conditional logits."""
        return max(len(self.classes) - 1, 1)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """CORN loss."""
        return corn_loss(logits, target)

    def outputs(self, logits: Tensor) -> dict[str, np.ndarray]:
        """``prob_<stage>`` columns and the predicted ``pred`` stage (CORN rank of the logits)."""
        probs = corn_class_probs(logits.double()).numpy()
        rank = corn_rank(logits.double()).numpy()
        out: dict[str, Any] = {f"prob_{c}": probs[:, i] for i, c in enumerate(self.classes)}
        out["pred"] = np.array([self.classes[i] for i in rank])
        return out

    def probs(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """``[N, K]`` class probabilities from the ``prob_<stage>`` columns."""
        return np.stack([np.asarray(outputs[f"prob_{c}"], float) for c in self.classes], 1)

    def decide(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The CORN rank of class probabilities.

        How many ``P(y > k) = sum_{j>k} p_j`` exceed one half: the rule one model applies to
        its own cumulative probabilities.
        """
        tail = 1.0 - np.cumsum(self.probs(outputs), axis=1)[:, :-1]  # P(y > k), k = 0..K-2
        rank = (tail > 0.5).sum(axis=1)
        return {"pred": np.array([self.classes[i] for i in rank])}

    def score(self, outputs: dict[str, np.ndarray], target: Tensor) -> dict[str, float]:
        """Quadratic-weighted kappa, MAE in classes, macro OvR AUROC, accuracy."""
        probs = self.probs(outputs)
        index = {c: i for i, c in enumerate(self.classes)}
        rank = np.array([index[str(c)] for c in outputs["pred"]], dtype=int)
        y, k = target.numpy().astype(int), len(self.classes)
        return {
            "qwk": M.quadratic_kappa(rank, y, k),
            "mae": float(np.mean(np.abs(rank - y))) if len(y) else M.NAN,
            "auroc": M.auroc_macro_ovr(probs, y),
            "accuracy": float(np.mean(rank == y)) if len(y) else M.NAN,
        }
