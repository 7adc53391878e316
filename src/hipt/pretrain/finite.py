"""Cross-process check that the DINO loss is finite, with no host sync on the step's hot path.

Every process must stop in the same step when any of them sees a non-finite loss: a process
that raised alone would leave the others waiting in the next collective (DDP's gradient
all-reduce, a checkpoint barrier) until the collective timeout.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from hipt.errors import HiptError


class NonFiniteLossError(HiptError):
    """The DINO loss was not finite on at least one process.

    :class:`FiniteLossCheck` raises it on every process in the same step, before the optimizer
    changes any weight, so all processes stop at the same point of their collective sequence
    (which is what makes saving a checkpoint at that point safe in a multi-process run).
    """


class FiniteLossCheck:
    """Agrees over all processes whether the losses of the current optimizer step were finite.

    ``Strategy.reduce_boolean_decision`` is not used: it takes a Python bool (one host read of the
    loss) and returns one (a second read), and Lightning's ``_sync_ddp`` puts a barrier before
    its all-reduce; that stalls the host on the device two or three times per step. Instead:

    1. :meth:`record` (in ``training_step``, every process, every micro-batch) counts a
       non-finite loss as a device tensor, sums the count over the processes with one
       ``all_reduce`` (issued by every process at the same point: after lightly's center
       all-reduce, before DDP's gradient all-reduces) and starts a non-blocking copy of the
       running count to pinned host memory, marked by a CUDA event. Nothing waits here.
    2. :meth:`check` (in ``on_before_optimizer_step``, once per optimizer step) waits for that
       event, i.e. only for the forward pass and the small all-reduce, while the backward pass
       queued since keeps the device busy, and reads the host copy. All processes read the same
       sum, so either all of them raise :class:`NonFiniteLossError` in this step or none does,
       and the optimizer never applies the non-finite gradients.

    Trade-off: the host still waits once per step, but only until the forward pass is done;
    with the backward pass queued behind it the device does not idle. Checking later (e.g. at
    the next step) would avoid even that wait, but would let the non-finite update through and
    leave nothing sound to save. On CPU the count is already in host memory and nothing is
    copied; on other accelerators the copy in :meth:`record` is a blocking one.
    """

    def __init__(self) -> None:
        self._count: Tensor | None = None  # device: processes with a non-finite loss this step
        self._host: Tensor | None = None  # host copy of ``_count``, valid once ``_ready`` is done
        self._ready: torch.cuda.Event | None = None
        self._pinned: Tensor | None = None  # reused pinned buffer (CUDA)
        self._world = 1

    def record(self, loss: Tensor) -> None:
        """Add this micro-batch's verdict on ``loss``, summed over all processes; no host read.

        Must be called by every process for every micro-batch (it is a collective).

        Args:
            loss: the scalar loss of this process.
        """
        bad = torch.logical_not(torch.isfinite(loss.detach())).to(torch.int32)
        self._world = 1
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self._world = dist.get_world_size()
            dist.all_reduce(bad)  # sum over processes; on NCCL queued, not awaited by the host
        # several micro-batches: the most processes that saw a non-finite loss in any of them
        self._count = bad if self._count is None else torch.maximum(self._count, bad)
        if bad.device.type == "cuda":
            if self._pinned is None:
                self._pinned = torch.zeros((), dtype=torch.int32, pin_memory=True)
            self._pinned.copy_(self._count, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
            self._host = self._pinned
        else:
            self._host = self._count.to("cpu")

    def check(self, step: int) -> None:
        """Raise on every process if any process recorded a non-finite loss since the last check.

        Args:
            step: the optimizer step, for the message.

        Raises:
            NonFiniteLossError: a loss of this step was ``nan`` or ``inf`` on some process.
        """
        if self._host is None:
            return
        if self._ready is not None:
            self._ready.synchronize()
        n_bad = int(self._host.item())  # host memory: the event above was the only wait
        self._count = self._host = self._ready = None
        if n_bad:
            where = f" on {n_bad} of {self._world} processes" if self._world > 1 else ""
            raise NonFiniteLossError(
                f"DINO loss is not finite at step {step}{where}; lower optim.lr or "
                "optim.clip_grad, or check the input data"
            )
