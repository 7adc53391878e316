"""DINO per-step schedules (lr, weight decay, teacher momentum) and the optimizer-step helpers.

Schedules are pure functions of the optimizer step, built on lightly's ``cosine_schedule`` /
``cosine_warmup_schedule``, so a resumed run recomputes exactly the values it would have used;
the helpers (AdamW parameter groups without decay on biases and norms, per-parameter gradient
clipping, last-layer freezing, EMA teacher update) are called from ``DinoModule`` hooks [0].

- [0]: DINO, 2021, https://arxiv.org/abs/2104.14294
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from lightly.models.utils import get_weight_decay_parameters, update_momentum
from lightly.utils.scheduler import cosine_schedule, cosine_warmup_schedule
from torch import Tensor, nn

from hipt.pretrain.config import OptimConfig

#: Key marking the parameter group whose weight decay follows the schedule.
DECAY_FLAG = "hipt_decay"


def global_batch_size(per_device: int, world_size: int, accumulate: int = 1) -> int:
    """Samples per optimizer step: per-device batch x processes (devices x nodes) x accumulation."""
    return int(per_device) * int(world_size) * int(accumulate)


def scaled_lr(lr: float, global_batch: int, reference_batch: int = 256) -> float:
    """DINO's linear scaling rule: ``lr * global_batch / reference_batch``."""
    return float(lr) * global_batch / reference_batch


def epochs_to_steps(epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """``epochs`` of ``steps_per_epoch`` optimizer steps, clipped to ``[0, total_steps]``."""
    return max(0, min(total_steps, round(epochs * steps_per_epoch)))


@dataclasses.dataclass(frozen=True)
class DinoSchedules:
    """Every per-step value of one run.

    Attributes:
        total_steps: optimizer steps of the whole run.
        peak_lr: learning rate at the end of warm-up (already batch-scaled).
        min_lr: learning rate at the last step.
        warmup_steps: linear warm-up steps (from 0).
        weight_decay: ``(start, end)`` of the cosine weight-decay schedule.
        momentum: ``(start, end)`` of the cosine teacher-momentum schedule.
        freeze_last_layer_steps: steps at whose start the head's last layer gets no update.
    """

    total_steps: int
    peak_lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: tuple[float, float]
    momentum: tuple[float, float]
    freeze_last_layer_steps: int

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} not in [0, {self.total_steps}]")

    def _step(self, step: int) -> int:
        return min(max(int(step), 0), self.total_steps - 1)

    def lr(self, step: int) -> float:
        """Linear warm-up from 0 to ``peak_lr``, then cosine to ``min_lr`` at the last step."""
        return cosine_warmup_schedule(
            step=self._step(step),
            max_steps=self.total_steps,
            start_value=self.peak_lr,
            end_value=self.min_lr,
            warmup_steps=self.warmup_steps,
            warmup_start_value=0.0,
        )

    def weight_decay_at(self, step: int) -> float:
        """Cosine from ``weight_decay[0]`` at step 0 to ``weight_decay[1]`` at the last step."""
        start, end = self.weight_decay
        return cosine_schedule(self._step(step), self.total_steps, start, end)

    def momentum_at(self, step: int) -> float:
        """Teacher EMA momentum: cosine from ``momentum[0]`` to ``momentum[1]`` (DINO: 1)."""
        start, end = self.momentum
        return cosine_schedule(self._step(step), self.total_steps, start, end)

    def last_layer_frozen(self, step: int) -> bool:
        """True while the head's last layer must not move (DINO ``freeze_last_layer``)."""
        return int(step) < self.freeze_last_layer_steps


# The optimizer settings are the stage config's typed ``optim`` block itself (one definition).
DinoOptim = OptimConfig


def make_schedules(
    optim: DinoOptim, total_steps: int, steps_per_epoch: int, global_batch: int
) -> DinoSchedules:
    """The schedules of a run of ``total_steps`` optimizer steps.

    Args:
        optim: settings; epoch-based warm-up/freeze lengths are converted with
            ``steps_per_epoch`` unless the step-based fields are set.
        total_steps: optimizer steps of the run.
        steps_per_epoch: optimizer steps per epoch of the train loader.
        global_batch: samples per optimizer step over all processes (lr scaling rule).
    """
    o = optim
    warmup = o.warmup_steps
    if warmup is None:
        warmup = epochs_to_steps(o.warmup_epochs, steps_per_epoch, total_steps)
    freeze = o.freeze_last_layer_steps
    if freeze is None:
        freeze = epochs_to_steps(o.freeze_last_layer_epochs, steps_per_epoch, total_steps)
    return DinoSchedules(
        total_steps=total_steps,
        peak_lr=scaled_lr(o.lr, global_batch, o.lr_reference_batch),
        min_lr=o.min_lr,
        warmup_steps=min(max(warmup, 0), total_steps),
        weight_decay=(o.weight_decay, o.weight_decay_end),
        momentum=(o.momentum_teacher, o.momentum_teacher_end),
        freeze_last_layer_steps=freeze,
    )


def param_groups(modules: Iterable[nn.Module]) -> list[dict[str, object]]:
    """AdamW groups: decayed weights, and biases + norm parameters without weight decay.

    Frozen parameters (``requires_grad=False``, e.g. the weight-norm gain) are left out.
    """
    decay, no_decay = get_weight_decay_parameters(list(modules))
    decay = [p for p in decay if p.requires_grad]
    no_decay = [p for p in no_decay if p.requires_grad]
    return [
        {"params": decay, DECAY_FLAG: True},
        {"params": no_decay, "weight_decay": 0.0, DECAY_FLAG: False},
    ]


def apply_schedules(optimizer: torch.optim.Optimizer, schedules: DinoSchedules, step: int) -> None:
    """Set the learning rate of every group and the weight decay of the decayed group."""
    lr = schedules.lr(step)
    wd = schedules.weight_decay_at(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = wd if group.get(DECAY_FLAG, True) else 0.0


@torch.no_grad()
def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> Tensor | None:
    """Clip each parameter's gradient to norm ``max_norm`` on its own, as DINO does.

    Each gradient of norm ``n`` is scaled by ``min(1, max_norm / (n + 1e-6))``, DINO's
    ``clip_coef`` (applied there only when below 1, which is the same). Everything stays on the
    device: one ``torch._foreach_norm`` for all norms, device-side coefficients and one
    ``torch._foreach_mul_``, so no value is read back to the host (a per-parameter
    ``float(norm)`` would stall the host on the device about 150 times per step).

    Args:
        parameters: parameters whose ``.grad`` is scaled in place; those without one are skipped.
        max_norm: largest norm of each gradient; ``<= 0`` leaves the gradients unchanged.

    Returns:
        The largest gradient norm before clipping as a 0-dim tensor on the gradients' device
        (``nan`` or ``inf`` if a gradient is not finite), or ``None`` if no parameter has a
        gradient.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    norms = torch._foreach_norm(grads, 2)
    if max_norm > 0:
        coefs = torch._foreach_add(norms, 1e-6)
        torch._foreach_reciprocal_(coefs)
        torch._foreach_mul_(coefs, float(max_norm))
        torch._foreach_clamp_max_(coefs, 1.0)
        torch._foreach_mul_(grads, coefs)
    return torch.stack(norms).max()


def cancel_last_layer_gradients(last_layer: nn.Module) -> None:
    """Drop the gradients of the head's last layer (AdamW then skips it entirely)."""
    for p in last_layer.parameters():
        p.grad = None


@torch.no_grad()
def update_teacher(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student`` (lightly ``update_momentum``)."""
    update_momentum(student, teacher, m=momentum)
