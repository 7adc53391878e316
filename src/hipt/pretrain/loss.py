"""The DINO loss: lightly's ``DINOLoss`` (centering, teacher-temperature warm-up), kept in fp32."""

from __future__ import annotations

import torch
from lightly.loss import DINOLoss
from torch import Tensor, nn


class DinoCriterion(nn.Module):
    """Cross-entropy between teacher (global views) and student (all views) softmax outputs [0].

    Wraps lightly's ``DINOLoss`` unchanged; the wrapper only evaluates it in fp32 outside
    autocast (the 65536-way softmax and its einsum lose too much in bf16) and exposes the
    teacher temperature in force, for logging. The center is a buffer (``loss.center``) that is
    all-reduced across processes by lightly and saved in checkpoints.

    - [0]: DINO, 2021, https://arxiv.org/abs/2104.14294

    Args:
        out_dim: width K of the head outputs.
        teacher_temp: teacher temperature after warm-up.
        warmup_teacher_temp: teacher temperature at epoch 0.
        warmup_teacher_temp_epochs: epochs of the linear temperature warm-up.
        student_temp: student temperature.
        center_momentum: EMA momentum of the center.
    """

    def __init__(
        self,
        out_dim: int,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.loss = DINOLoss(
            output_dim=out_dim,
            warmup_teacher_temp=warmup_teacher_temp,
            teacher_temp=teacher_temp,
            warmup_teacher_temp_epochs=warmup_teacher_temp_epochs,
            student_temp=student_temp,
            center_momentum=center_momentum,
        )

    @property
    def center(self) -> Tensor:
        """Running center of the teacher outputs ``[1, 1, K]``."""
        return self.loss.center

    def teacher_temperature(self, epoch: int) -> float:
        """The teacher temperature lightly's ``DINOLoss`` uses at ``epoch``."""
        if epoch < self.loss.warmup_teacher_temp_epochs:
            return float(self.loss.teacher_temp_schedule[epoch])
        return float(self.loss.teacher_temp)

    def forward(self, teacher_out: list[Tensor], student_out: list[Tensor], epoch: int) -> Tensor:
        """Mean DINO loss over all (teacher view, student view) pairs of different views.

        Args:
            teacher_out: one ``[B, K]`` tensor per global view (views ``0 .. G-1``).
            student_out: one ``[B, K]`` tensor per view, global views first, in the same order.
            epoch: current epoch (drives the temperature warm-up).

        Returns:
            Scalar loss; the center is updated as a side effect (as in DINO).
        """
        with torch.autocast(device_type=student_out[0].device.type, enabled=False):
            return self.loss(
                [t.float() for t in teacher_out], [s.float() for s in student_out], epoch=epoch
            )
