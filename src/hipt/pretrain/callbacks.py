"""Training callbacks of the DINO stage: throughput logging and a cross-rank parameter check."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class SaveOnException(Callback):
    """Writes the state at an interruption (Ctrl-C, error) to ``path`` for ``resume=true``.

    Lightning's ``OnExceptionCheckpoint`` would also make every later ``fit`` silently resume
    from its file; this one only saves, and resuming stays an explicit choice.

    Args:
        path: checkpoint file (``OUT/checkpoints/last.ckpt``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """Save the full training state (weights, optimizer, loops, RNG)."""
        trainer.save_checkpoint(self.path, weights_only=False)


class Throughput(Callback):
    """Logs optimizer steps/s and samples/s (global batch) and keeps the run's mean.

    The first ``skip`` steps (compilation, worker start-up, cache warm-up) are left out of
    :attr:`summary`.

    Args:
        global_batch: samples per optimizer step over all processes.
        skip: leading steps excluded from the mean.
    """

    def __init__(self, global_batch: int, skip: int = 1) -> None:
        self.global_batch = global_batch
        self.skip = skip
        self._last: float | None = None
        self._last_step = 0
        self._steps = 0
        self._seconds = 0.0
        self._seen = 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Time between consecutive optimizer steps."""
        now = time.perf_counter()
        step = trainer.global_step
        if step == self._last_step:  # accumulation micro-batch
            return
        if self._last is not None:
            dt = max(now - self._last, 1e-9)
            n = step - self._last_step
            self._seen += n
            if self._seen > self.skip:
                self._steps += n
                self._seconds += dt
            pl_module.log_dict(
                {"train/steps_per_s": n / dt, "train/samples_per_s": n * self.global_batch / dt}
            )
        self._last, self._last_step = now, step

    @property
    def summary(self) -> dict[str, float | int]:
        """Mean steps/s and samples/s over the timed steps."""
        if self._steps == 0 or self._seconds == 0:
            return {"timed_steps": 0}
        rate = self._steps / self._seconds
        return {
            "timed_steps": self._steps,
            "steps_per_s": round(rate, 4),
            "samples_per_s": round(rate * self.global_batch, 2),
        }


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
