"""A deterministic, rank-sharded, resumable sampler that hands every sample its own seed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
from torch.utils.data import Sampler


class SampleKey(NamedTuple):
    """What a dataset gets instead of a bare index: which sample, and the seed of its views."""

    # The field shadows tuple.index, which mypy reports for any NamedTuple field of that name.
    index: int  # type: ignore[assignment]
    seed: int


class ShardedEpochSampler(Sampler[SampleKey]):
    """Per-epoch permutation split into global batches, each rank taking its slice of each.

    Optimizer step ``s`` of epoch ``e`` uses positions ``[s*G, (s+1)*G)`` of the epoch's
    permutation (``G = batch_size * world_size``); rank ``r`` gets ``[s*G + r*B, s*G + (r+1)*B)``.
    So a run on ``W`` processes with per-device batch ``B`` sees exactly the samples (and, as
    the seeds are drawn per position, the augmentations) of a 1-process run with batch ``W*B``.
    Epochs have ``max(1, n // G)`` batches; a dataset smaller than one global batch is cycled.

    On a resumed run ``start_batch(epoch)`` says how many batches of that epoch were already
    trained, and they are skipped, so the run continues with the very batch it would have seen.

    Args:
        n: dataset size.
        batch_size: samples per rank per batch.
        rank: this process's global rank.
        world_size: number of processes.
        seed: base seed of permutations and per-sample seeds.
        start_batch: ``epoch -> batches to skip``; ``None`` skips nothing.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        start_batch: Callable[[int], int] | None = None,
    ) -> None:
        if n < 1:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n = n
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start_batch = start_batch
        self.epoch = 0

    @property
    def global_batch(self) -> int:
        """Samples per batch over all ranks."""
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        """Batches in every epoch (the same on every rank)."""
        return max(1, self.n // self.global_batch)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, seeds)`` of every position of ``epoch`` over all ranks."""
        rng = np.random.default_rng([self.seed, epoch])
        total = self.batches_per_epoch * self.global_batch
        order = np.resize(rng.permutation(self.n), total)
        seeds = rng.integers(0, 2**63 - 1, size=total, dtype=np.int64)
        return order, seeds

    def __iter__(self) -> Iterator[SampleKey]:
        order, seeds = self.epoch_plan(self.epoch)
        skip = self.start_batch(self.epoch) if self.start_batch is not None else 0
        skip = min(max(int(skip), 0), self.batches_per_epoch)
        for b in range(skip, self.batches_per_epoch):
            first = b * self.global_batch + self.rank * self.batch_size
            for pos in range(first, first + self.batch_size):
                yield SampleKey(int(order[pos]), int(seeds[pos]))
