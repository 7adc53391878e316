"""``DinoModule``: DINO self-distillation for both HIPT levels (ViT-256 and ViT-4K)."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, cast

import torch
from lightly.models.utils import deactivate_requires_grad
from lightning.pytorch import LightningModule
from torch import Tensor

from hipt.errors import HiptError
from hipt.pretrain.finite import FiniteLossCheck
from hipt.pretrain.heads import MultiCropWrapper
from hipt.pretrain.loss import DinoCriterion
from hipt.pretrain.schedules import (
    DinoOptim,
    DinoSchedules,
    apply_schedules,
    cancel_last_layer_gradients,
    clip_gradients,
    global_batch_size,
    make_schedules,
    param_groups,
    update_teacher,
)

if TYPE_CHECKING:
    from lightly.models.modules import DINOProjectionHead

log = logging.getLogger(__name__)


class DinoModule(LightningModule):
    """Student/teacher self-distillation [0]; only wires the units of :mod:`hipt.pretrain`.

    The student (backbone with drop-path + head) sees every view, the teacher (same
    architecture, no drop-path, an EMA of the student that gets no gradient) only the global
    views. Per optimizer step: lr and weight decay from the cosine schedules, a check that the
    loss was finite on every process, per-parameter gradient clipping, last-layer freezing at
    the start, then the EMA teacher update.

    The step reads no tensor value back to the host except the one (non-stalling) read of
    :class:`~hipt.pretrain.finite.FiniteLossCheck`: the loss is logged as a tensor, the
    schedule values as host tensors, and the clipping stays on the device.

    - [0]: DINO, 2021, https://arxiv.org/abs/2104.14294

    Args:
        student: backbone + head over a list of views.
        teacher: the same architecture; its weights are overwritten with the student's.
        criterion: DINO loss (holds the center).
        optim: optimizer and schedule settings.
        batch_size: samples per device per micro-batch (for the lr scaling rule).
        n_global_views: leading views that the teacher sees (2).
    """

    #: Read by Lightning's ``ThroughputMonitor``: FLOPs per batch are not counted here.
    flops_per_batch: int | None = None

    def __init__(
        self,
        student: MultiCropWrapper,
        teacher: MultiCropWrapper,
        criterion: DinoCriterion,
        optim: DinoOptim,
        batch_size: int,
        n_global_views: int = 2,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.teacher.load_state_dict(self.student.state_dict())
        deactivate_requires_grad(self.teacher)
        self.criterion = criterion
        self.optim = optim
        self.batch_size = batch_size
        self.n_global_views = n_global_views
        self.schedules: DinoSchedules | None = None
        self.finite_check = FiniteLossCheck()
        self._resumed_batch: int | None = None

    # -- schedules ---------------------------------------------------------------------------
    def _global_batch(self) -> int:
        t = self.trainer
        return global_batch_size(self.batch_size, t.world_size, t.accumulate_grad_batches)

    def build_schedules(self) -> DinoSchedules:
        """Schedules of this run (needs the train loader's length: called at train start)."""
        t = self.trainer
        acc = t.accumulate_grad_batches
        return make_schedules(
            self.optim,
            total_steps=int(t.estimated_stepping_batches),
            steps_per_epoch=max(1, math.ceil(int(t.num_training_batches) / acc)),
            global_batch=self._global_batch(),
        )

    def on_train_start(self) -> None:
        """Build the schedules once the loader length and the restored step are known."""
        self.schedules = self.build_schedules()
        log.info("DINO schedules: %s", self.schedules)
        if self._resumed_batch not in (None, self._global_batch()):
            log.warning(
                "resumed with global batch %d (the run had %d): lr scaling and data "
                "order differ from the interrupted run",
                self._global_batch(),
                self._resumed_batch,
            )

    def _schedules(self) -> DinoSchedules:
        if self.schedules is None:
            raise HiptError("DinoModule schedules are built in on_train_start; use Trainer.fit")
        return self.schedules

    # -- training ----------------------------------------------------------------------------
    def forward(self, views: list[Tensor]) -> list[Tensor]:
        """Student head outputs, one ``[B, K]`` per view."""
        return self.student(views)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """DINO loss of one multi-crop batch (``batch.data``: list of ``[B, C, H, W]`` views).

        Its finiteness is only recorded here (see :meth:`on_before_optimizer_step`). Nothing is
        read back from the device: the loss is shown in the progress bar only when there is one
        (Lightning reads progress-bar values every step), and the schedule values are logged as
        host tensors (a Python float would be copied to the device, a blocking copy).
        """
        views = list(batch.data)
        with torch.no_grad():
            teacher_out = self.teacher(views[: self.n_global_views])
        student_out = self.student(views)
        loss = self.criterion(teacher_out, student_out, epoch=self.current_epoch)
        self.finite_check.record(loss)
        s, step = self._schedules(), self.global_step
        self.log("train/loss", loss, prog_bar=self.trainer.progress_bar_callback is not None)
        values = {
            "train/lr": s.lr(step),
            "train/weight_decay": s.weight_decay_at(step),
            "train/momentum": s.momentum_at(step),
            "train/teacher_temp": self.criterion.teacher_temperature(self.current_epoch),
            "train/last_layer_frozen": float(s.last_layer_frozen(step)),
        }
        self.log_dict({k: torch.tensor(v) for k, v in values.items()})
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW without weight decay on biases and norms; lr/wd are set every step."""
        groups = param_groups([self.student])
        return torch.optim.AdamW(groups, lr=0.0, betas=tuple(self.optim.betas))  # type: ignore[arg-type]

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        """Schedules -> (closure: forward, backward, clip, freeze) -> AdamW step -> EMA teacher."""
        s, step = self._schedules(), self.global_step
        apply_schedules(
            optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, s, step
        )
        optimizer.step(closure=optimizer_closure)
        update_teacher(self.student, self.teacher, s.momentum_at(step))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop if the loss was not finite, then freeze the head's last layer at the start.

        Raises:
            NonFiniteLossError: on every process at once, if the loss of this step was not
                finite on any of them; the weights are still those of the previous step.
        """
        self.finite_check.check(self.global_step)
        if self._schedules().last_layer_frozen(self.global_step):
            head = cast("DINOProjectionHead", self.student.head)  # made by build_head
            cancel_last_layer_gradients(head.last_layer)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: Any = None,
        gradient_clip_algorithm: Any = None,
    ) -> None:
        """DINO's per-parameter gradient-norm clip (``optim.clip_grad``; 0 disables)."""
        if self.optim.clip_grad > 0:
            clip_gradients(self.student.parameters(), self.optim.clip_grad)

    # -- checkpoint --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the RNG states, so drop-path draws continue as if never interrupted."""
        checkpoint["hipt_global_batch"] = self._global_batch()
        checkpoint["hipt_rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["hipt_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the RNG states saved by :meth:`on_save_checkpoint`."""
        self._resumed_batch = checkpoint.get("hipt_global_batch")
        rng = checkpoint.get("hipt_rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if (
            "cuda" in rng
            and torch.cuda.is_available()
            and len(rng["cuda"]) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(rng["cuda"])
