"""Training callbacks of the DINO stage: save on interruption, and a cross-rank parameter check.

Throughput is logged by Lightning's own ``ThroughputMonitor``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from hipt.pretrain.finite import NonFiniteLossError

log = logging.getLogger(__name__)


class SaveOnException(Callback):
    """Writes the state at an interruption (Ctrl-C, error) to ``path`` for ``resume=true``.

    Lightning's ``OnExceptionCheckpoint`` would also make every later ``fit`` silently resume
    from its file; this one only saves, and resuming stays an explicit choice.

    Saving is a collective (``Trainer.save_checkpoint`` ends in a barrier that every process
    must reach), so it is only attempted where no process can be left waiting:

    - a one-process run: always;
    - a multi-process run: only for a :class:`~hipt.pretrain.finite.NonFiniteLossError`, which
      every process raises at the same point after agreeing on it. Any other exception may be
      raised by one process alone (a data error, out of memory) or at different points on
      different processes (Ctrl-C, SIGTERM), while the others sit in a collective that it
      never joins: a barrier there would hang until the collective timeout. Such a run is not
      saved here; ``resume=true`` continues from the last periodic checkpoint.

    Args:
        path: checkpoint file (``OUT/checkpoints/last.ckpt``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """Save the full training state (weights, optimizer, loops, RNG) where that is safe."""
        if trainer.world_size > 1 and not isinstance(exception, NonFiniteLossError):
            if trainer.is_global_zero:
                log.warning(
                    "%s not written at this interruption (%s): in a %d-process run the other "
                    "processes may be waiting in a collective; resume=true continues from the "
                    "last periodic checkpoint",
                    self.path,
                    type(exception).__name__,
                    trainer.world_size,
                )
            return
        trainer.save_checkpoint(self.path, weights_only=False)


def parameter_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes (name order): equal digests mean equal weights."""
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class RankSync(Callback):
    """At the end of training, gathers a digest of student + teacher weights from every rank.

    DDP keeps replicas equal by construction; this records the proof in ``run.json`` (and
    catches a rank that diverged, e.g. through a non-deterministic custom op).
    """

    def __init__(self) -> None:
        self.digests: list[str] = []

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """All-gather the per-rank digests (as 32 bytes each)."""
        digest = parameter_digest(pl_module)
        raw = torch.tensor(list(bytes.fromhex(digest)), dtype=torch.int64, device=pl_module.device)
        gathered = trainer.strategy.all_gather(raw)
        rows = gathered.reshape(-1, raw.numel()).cpu().tolist()
        self.digests = [bytes(int(v) for v in row).hex() for row in rows]
