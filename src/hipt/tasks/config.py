"""Typed settings of a task: which cohort columns hold the labels, and task options."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TargetConfig:
    """Which cohort columns hold the labels, and task options.

    Attributes:
        column: label column (default: ``subtype``, ``stage`` or ``response`` after the task).
            Survival reads ``time`` + ``event`` or TCGA-style ``survival_months`` +
            ``censorship`` (1 = censored).
        classes: subtype class names in logit order (default: sorted names found); a label
            outside this list is a validation error.
        n_bins: survival time bins (quantiles of uncensored training times; official: 4).
        alpha: survival NLL weight on the uncensored term (MCAT ``alpha_surv``; official 0).
    """

    column: str | None = None
    classes: list[str] = field(default_factory=list)
    n_bins: int = 4
    alpha: float = 0.0
