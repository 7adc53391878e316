"""Best-validation model selection and early stopping in one NaN-tolerant callback."""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


class SelectBest(L.Callback):
    """Track ``monitor`` after each validation; keep the best weights and optionally stop early.

    Unlike Lightning's ``EarlyStopping``, an undefined metric (NaN, e.g. an AUROC on a
    validation part with one class) neither stops training nor counts as an improvement.

    Args:
        monitor: logged metric, e.g. ``val/auroc``; ``*loss`` and ``*mae``/``*ibs`` are minimised.
        restore_best: load the best weights at the end of training (``select=best_val``).
        patience: stop after this many validations without improvement; None = never.
    """

    def __init__(self, monitor: str, restore_best: bool, patience: int | None = None) -> None:
        self.monitor, self.restore_best, self.patience = monitor, restore_best, patience
        self.minimize = monitor.endswith(("loss", "mae", "ibs"))
        self.best = math.inf if self.minimize else -math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, Any] | None = None
        self.wait = 0

    def _better(self, value: float) -> bool:
        return value < self.best if self.minimize else value > self.best

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Compare the new value with the best so far."""
        if trainer.sanity_checking:
            return
        logged = trainer.callback_metrics.get(self.monitor)
        if logged is None:
            raise KeyError(
                f"train.monitor '{self.monitor}' was not logged; logged: "
                f"{', '.join(sorted(trainer.callback_metrics))}"
            )
        value = float(logged)
        if math.isfinite(value) and self._better(value):
            self.best, self.best_epoch, self.wait = value, trainer.current_epoch, 0
            if self.restore_best:
                self.best_state = copy.deepcopy(pl_module.state_dict())
            return
        self.wait += 1
        if self.patience is not None and self.wait >= self.patience:
            log.info(
                "early stop at epoch %d (best %s=%.4f at epoch %s)",
                trainer.current_epoch,
                self.monitor,
                self.best,
                self.best_epoch,
            )
            trainer.should_stop = True

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Load the best weights (when asked and when any epoch had a finite value)."""
        if self.restore_best and self.best_state is not None:
            pl_module.load_state_dict(self.best_state, strict=True)
            log.info("restored epoch %s (best %s=%.4f)", self.best_epoch, self.monitor, self.best)
        elif self.restore_best:
            log.warning("no finite %s in any epoch; keeping the last epoch", self.monitor)
