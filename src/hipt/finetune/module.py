"""SlideTaskModule: wires a slide model to a task's loss and metrics (one bag per step)."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor, nn

from hipt.finetune.datamodule import Bag
from hipt.tasks.base import Task


class SlideTaskModule(L.LightningModule):
    """Train a slide model on one task; validation metrics are computed on whole epochs.

    Args:
        model: slide model returning an object with ``logits [1, C]`` (``hipt.models``).
        task: the task (loss, metrics), already fitted to the fold.
        lr: Adam learning rate.
        weight_decay: Adam L2 weight decay (official: Adam with ``weight_decay``, not AdamW).
        info: facts stored in every checkpoint under ``"hipt"`` (model name, overrides, input
            kind, task state) so that later stages can rebuild the model without this config.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        lr: float = 2e-4,
        weight_decay: float = 1e-5,
    ) -> None:
        super().__init__()
        self.model, self.task = model, task
        self.lr, self.weight_decay = lr, weight_decay
        self._val_logits: list[Tensor] = []
        self._val_targets: list[Tensor] = []
        self._train_loss, self._train_bags = torch.zeros(()), 0

    def forward(self, data: Tensor) -> Tensor:
        """Logits ``[1, C]`` of one bag."""
        return self.model(data).logits

    def _step(self, batch: Bag) -> tuple[Tensor, Tensor]:
        logits = self(batch.data)
        return self.task.loss(logits, batch.target), logits

    def training_step(self, batch: Bag, batch_idx: int) -> Tensor:
        """Loss of one bag (Lightning divides it by ``accumulate_grad_batches``)."""
        loss, _ = self._step(batch)
        # summed here and logged once per epoch: Lightning's per-step self.log costs about as
        # much as a whole step of a small slide head
        self._train_loss = self._train_loss + loss.detach()
        self._train_bags += 1
        return loss

    def on_train_epoch_start(self) -> None:
        """Reset the epoch's summed training loss."""
        self._train_loss, self._train_bags = torch.zeros((), device=self.device), 0

    def on_train_epoch_end(self) -> None:
        """Log the epoch's mean training loss as ``train/loss``."""
        if self._train_bags:
            self.log("train/loss", self._train_loss / self._train_bags, batch_size=1)

    def on_validation_epoch_start(self) -> None:
        """Reset the epoch's collected outputs."""
        self._val_logits, self._val_targets = [], []

    def validation_step(self, batch: Bag, batch_idx: int) -> None:
        """Collect logits and targets; metrics need the whole validation part."""
        loss, logits = self._step(batch)
        self.log("val/loss", loss, on_step=False, on_epoch=True, batch_size=1)
        self._val_logits.append(logits.detach().float().cpu())
        self._val_targets.append(batch.target.detach().cpu())

    def on_validation_epoch_end(self) -> None:
        """Log every task metric as ``val/<name>`` (NaN when undefined on this part)."""
        if not self._val_logits:
            return
        metrics = self.task.val_metrics(torch.cat(self._val_logits), torch.cat(self._val_targets))
        clean = {f"val/{k}": (v if math.isfinite(v) else float("nan")) for k, v in metrics.items()}
        self.log_dict(clean, batch_size=1)

    def predict_step(self, batch: Bag, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Logits ``[1, C]`` of one bag (whole bag, eval mode)."""
        return self(batch.data).detach().float().cpu()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over trainable parameters only (a frozen ViT-4K gets no optimizer state)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        # foreach: one fused update over all parameter tensors (the per-tensor loop dominated
        # the step time of small heads on CPU); the same Adam update.
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay, foreach=True)
