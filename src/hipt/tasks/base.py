"""Task registry: label parsing, head size, loss, predictions and metrics of each slide task."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from hipt.cohort import Problem, is_missing, rows_of
from hipt.registry import Registry
from hipt.tasks import metrics as M
from hipt.tasks.config import TargetConfig

TASKS: Registry[type[Task]] = Registry("task")


class Task(ABC):
    """One prediction task; per-fold state (e.g. survival bins) is set by :meth:`fit`.

    Args:
        cfg: the ``target`` config block.
    """

    name: ClassVar[str]
    default_column: ClassVar[str | None] = None
    #: validation metric used by ``best_val`` selection unless ``train.monitor`` is set.
    default_monitor: ClassVar[str] = "val/auroc"
    #: canonical label columns that :meth:`read_labels` returns.
    label_columns: ClassVar[tuple[str, ...]] = ("label",)
    #: test-fold plots made by the runner: ``roc``, ``confusion``, ``km``.
    plots: ClassVar[tuple[str, ...]] = ("roc", "confusion")

    def __init__(self, cfg: TargetConfig) -> None:
        self.cfg = cfg
        self.classes: list[str] = list(cfg.classes)
        #: True once a fitted model's state is loaded: labels then map onto its classes.
        self.fixed = False

    @property
    def column(self) -> str:
        """Cohort column holding the label."""
        return self.cfg.column or str(self.default_column)

    # ----- cohort level -------------------------------------------------------------------
    def has_labels(self, df: pd.DataFrame) -> bool:
        """Whether the cohort table has this task's label column(s) at all."""
        return bool(self.label_source(df))

    def label_source(self, df: pd.DataFrame) -> list[str]:
        """The table's columns the labels are read from (empty when it has none)."""
        return [self.column] if self.column in df.columns else []

    def read_labels(self, df: pd.DataFrame) -> tuple[pd.DataFrame, list[Problem]]:
        """Canonical label columns on ``df``'s index, and one problem per bad group of rows."""
        if self.column not in df.columns:
            return pd.DataFrame(index=df.index, columns=list(self.label_columns)), [
                Problem(
                    [],
                    f"missing label column '{self.column}' for task {self.name} "
                    f"(have: {', '.join(df.columns)}; set target.column)",
                )
            ]
        raw = df[self.column]
        parsed = raw.map(lambda v: None if is_missing(v) else self.parse_value(str(v).strip()))
        problems = []
        missing = df.index[raw.map(is_missing)]
        if len(missing):
            problems.append(Problem(rows_of(missing), f"missing {self.column} label"))
        bad = df.index[parsed.isna() & ~raw.map(is_missing)]
        for value, idx in pd.Series(bad, index=raw[bad].to_numpy()).groupby(level=0):
            problems.append(
                Problem(rows_of(idx), f"invalid {self.column} '{value}' ({self.valid_values()})")
            )
        labels = self.encode(parsed, df.index[parsed.notna()])
        return pd.DataFrame({"label": labels}, index=df.index), problems

    def parse_value(self, value: str) -> Any | None:
        """Parsed label of one cell, or None when it is not a valid label."""
        return value

    def valid_values(self) -> str:
        """Human description of the accepted values."""
        return "any text"

    def encode(self, parsed: pd.Series, valid: pd.Index) -> pd.Series:
        """Class index per row (NaN where invalid); fixes :attr:`classes`."""
        if not self.classes and not self.fixed:
            self.classes = sorted({str(v) for v in parsed[valid]})
        lookup = {c: i for i, c in enumerate(self.classes)}
        return parsed.map(lambda v: np.nan if pd.isna(v) else lookup.get(str(v), np.nan))

    def strata(self, patients: pd.DataFrame) -> np.ndarray:
        """Stratification key per patient for the folds."""
        return patients["label"].to_numpy().astype(int)

    def check_strata(self, patients: pd.DataFrame, n_folds: int) -> list[Problem]:
        """Classes with fewer patients than folds (stratified folds need one per test fold)."""
        problems = []
        for c, group in patients.groupby("label"):
            if len(group) < n_folds:
                rows = sorted(r for rs in group["rows"] for r in rs)
                problems.append(
                    Problem(
                        rows,
                        f"class '{self.class_name(int(c))}' has "
                        f"{len(group)} patient(s), fewer than the "
                        f"{n_folds} folds requested",
                    )
                )
        return problems

    def class_name(self, index: int) -> str:
        """Display name of class ``index``."""
        return self.classes[index]

    # ----- fold level ---------------------------------------------------------------------
    def fit(self, train: pd.DataFrame) -> None:  # noqa: B027 - optional hook
        """Set per-fold state from the training patients (nothing for classification)."""

    @property
    def n_outputs(self) -> int:
        """Width of the model's logits."""
        return len(self.classes)

    def targets(self, patients: pd.DataFrame) -> Tensor:
        """Training targets ``[N]`` (class index)."""
        return torch.as_tensor(patients["label"].to_numpy().astype(np.int64))

    def sample_labels(self, patients: pd.DataFrame) -> np.ndarray:
        """Groups balanced by the training sampler."""
        return self.strata(patients)

    @abstractmethod
    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Scalar loss of ``logits [B, C]`` against ``target`` (as made by :meth:`targets`)."""

    @abstractmethod
    def outputs(self, logits: Tensor) -> dict[str, np.ndarray]:
        """Prediction columns (probabilities, risk...) for ``logits [N, C]``."""

    @abstractmethod
    def score(self, outputs: dict[str, np.ndarray], target: Tensor) -> dict[str, float]:
        """Every metric of the task on ``N`` patients, from their prediction columns."""

    def metrics(self, logits: Tensor, target: Tensor) -> dict[str, float]:
        """Every metric of the task on ``N`` patients (``score`` of ``outputs(logits)``)."""
        return self.score(self.outputs(logits), target)

    def val_metrics(self, logits: Tensor, target: Tensor) -> dict[str, float]:
        """Metrics logged after every validation epoch (default: all of :meth:`metrics`)."""
        return self.metrics(logits, target)

    def combine(self, members: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The ensemble of several models' prediction columns for the same patients.

        The rule: every numeric column (class probabilities, risk, hazards, survival per bin)
        is the mean over the members; the predicted class is then decided from the means
        exactly as one model decides from its own (:meth:`decide`).
        """
        if not members:
            raise ValueError("an ensemble needs at least one member")
        keys = [k for k, v in members[0].items() if np.asarray(v).dtype.kind in "fiu"]
        mean = {k: np.mean([np.asarray(m[k], float) for m in members], axis=0) for k in keys}
        return {**mean, **self.decide(mean)}

    def decide(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Columns derived from the numeric ones (the predicted class), if the task has any."""
        return {}

    def headline(self, outputs: dict[str, np.ndarray]) -> tuple[str, float]:
        """One bag's prediction in words and the score pages sort by (first row of outputs).

        Classification: the predicted class and its probability.
        """
        pred = str(outputs["pred"][0])
        return pred, float(outputs[f"prob_{pred}"][0])

    def truth(self, patients: pd.DataFrame) -> dict[str, Any]:
        """True-label columns of the predictions table."""
        y = patients["label"].to_numpy().astype(int)
        return {"label": [self.class_name(i) for i in y], "label_index": y}

    def roc_columns(self) -> tuple[list[str], list[str]]:
        """Score column and name of each ROC panel's positive class."""
        return [f"prob_{c}" for c in self.classes], list(self.classes)

    def state(self) -> dict[str, Any]:
        """What a later consumer of the model needs (stored in its card's ``output``)."""
        return {"task": self.name, "classes": list(self.classes), "n_outputs": self.n_outputs}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` recorded (the inverse, used by :func:`task_from_state`).

        Labels read afterwards are encoded on these classes (a label the model does not know
        is invalid), not on the ones a new cohort happens to contain.
        """
        self.classes = [str(c) for c in state["classes"]]
        self.fixed = True


@TASKS.register("subtype")
class SubtypeTask(Task):
    """Cancer subtype: cross-entropy; macro one-vs-rest AUROC, balanced accuracy, macro F1."""

    name = "subtype"
    default_column = "subtype"

    def parse_value(self, value: str) -> Any | None:
        """Any non-empty name; with ``target.classes`` set, only those."""
        if self.cfg.classes and value not in self.cfg.classes:
            return None
        return value

    def valid_values(self) -> str:
        """Accepted class names."""
        return f"target.classes is {list(self.cfg.classes)}" if self.cfg.classes else "any text"

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy."""
        return F.cross_entropy(logits, target.long())

    def outputs(self, logits: Tensor) -> dict[str, np.ndarray]:
        """``prob_<class>`` columns and the arg-max ``pred``."""
        probs = torch.softmax(logits.double(), dim=1).numpy()
        out: dict[str, Any] = {f"prob_{c}": probs[:, i] for i, c in enumerate(self.classes)}
        return {**out, **self.decide(out)}

    def probs(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """``[N, C]`` class probabilities from the ``prob_<class>`` columns."""
        return np.stack([np.asarray(outputs[f"prob_{c}"], float) for c in self.classes], 1)

    def decide(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The arg-max class ``pred``."""
        return {"pred": np.array([self.classes[i] for i in self.probs(outputs).argmax(1)])}

    def score(self, outputs: dict[str, np.ndarray], target: Tensor) -> dict[str, float]:
        """AUROC (macro OvR), balanced accuracy, macro F1, accuracy."""
        probs = self.probs(outputs)
        y, pred, c = target.numpy().astype(int), probs.argmax(1), len(self.classes)
        return {
            "auroc": M.auroc_macro_ovr(probs, y),
            "balanced_accuracy": M.balanced_accuracy(pred, y),
            "f1": M.f1_macro(pred, y, c),
            "accuracy": float(np.mean(pred == y)) if len(y) else M.NAN,
        }


POSITIVE = {"1", "1.0", "true", "yes", "responder", "response", "r"}
NEGATIVE = {
    "0",
    "0.0",
    "false",
    "no",
    "non-responder",
    "nonresponder",
    "non_responder",
    "non responder",
    "no response",
    "nr",
}


@TASKS.register("response")
class ResponseTask(Task):
    """Treatment response: one logit, binary cross-entropy; AUROC, AUPRC, balanced accuracy."""

    name = "response"
    default_column = "response"
    plots = ("roc",)

    def roc_columns(self) -> tuple[list[str], list[str]]:
        """One panel: responder probability."""
        return ["prob_responder"], ["responder"]

    def parse_value(self, value: str) -> Any | None:
        """``responder``/``non-responder``, 1/0, yes/no, true/false (any case)."""
        v = value.lower()
        return 1 if v in POSITIVE else 0 if v in NEGATIVE else None

    def valid_values(self) -> str:
        """Accepted values."""
        return "responder/non-responder, 1/0, yes/no or true/false"

    def encode(self, parsed: pd.Series, valid: pd.Index) -> pd.Series:
        """0 = non-responder, 1 = responder."""
        self.classes = ["non-responder", "responder"]
        return parsed.map(lambda v: np.nan if pd.isna(v) else float(v))

    @property
    def n_outputs(self) -> int:
        """A single logit."""
        return 1

    def targets(self, patients: pd.DataFrame) -> Tensor:
        """Float targets ``[N]`` in {0, 1}."""
        return torch.as_tensor(patients["label"].to_numpy().astype(np.float32))

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Binary cross-entropy on the single logit."""
        return F.binary_cross_entropy_with_logits(logits[:, 0], target.float())

    def outputs(self, logits: Tensor) -> dict[str, np.ndarray]:
        """``prob_responder`` and the thresholded ``pred``."""
        out = {"prob_responder": torch.sigmoid(logits[:, 0].double()).numpy()}
        return {**out, **self.decide(out)}

    def headline(self, outputs: dict[str, np.ndarray]) -> tuple[str, float]:
        """The predicted response and the probability of responding."""
        return str(outputs["pred"][0]), float(outputs["prob_responder"][0])

    def decide(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``responder`` from probability 0.5 on."""
        p = np.asarray(outputs["prob_responder"], float)
        return {"pred": np.where(p >= 0.5, "responder", "non-responder")}

    def score(self, outputs: dict[str, np.ndarray], target: Tensor) -> dict[str, float]:
        """AUROC, AUPRC, balanced accuracy at 0.5."""
        p = np.asarray(outputs["prob_responder"], float)
        y = target.numpy().astype(int)
        return {
            "auroc": M.auroc_binary(p, y),
            "auprc": M.auprc_binary(p, y),
            "balanced_accuracy": M.balanced_accuracy((p >= 0.5).astype(int), y),
        }


def build_task(name: str, cfg: TargetConfig) -> Task:
    """Instantiate a registered task (``subtype``, ``stage``, ``survival``, ``response``)."""
    import hipt.tasks.ordinal  # noqa: F401 - registers "stage"
    import hipt.tasks.survival  # noqa: F401 - registers "survival"

    return TASKS.get(name)(cfg)


def task_from_state(state: dict[str, Any]) -> Task:
    """The fitted task a model's card describes (its ``output``).

    Ready to turn logits into predictions and metrics: classes, survival bins and ordinal
    levels as at training.
    """
    name = str(state["task"])
    n_bins = int(state["n_outputs"]) if name == "survival" else TargetConfig.n_bins
    classes = list(state["classes"]) if name == "subtype" else []
    task = build_task(name, TargetConfig(classes=classes, n_bins=n_bins))
    task.load_state(state)
    return task
