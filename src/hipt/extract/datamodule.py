"""DataModule for predict: this rank's shard of slides as a :class:`RegionStream` DataLoader."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from hipt.errors import HiptError
from hipt.extract.dataset import PatchBatch, RegionStream
from hipt.extract.plan import shard
from hipt.models.runtime import worker_start_method
from hipt.slides.tiles import SlideTiles

log = logging.getLogger(__name__)


def _identity(batch: PatchBatch) -> PatchBatch:
    return batch


def _worker_init(_: int) -> None:
    # Readers decode with their own threads; torch ops in workers must not fight the model.
    torch.set_num_threads(1)


class ExtractDataModule(LightningDataModule):
    """Shards ``todo`` over ranks in ``setup`` (when rank and world size are known).

    Args:
        jobs: every slide of the run.
        todo: positions of the slides to encode (same list on every rank).
        fingerprint: hash of ``todo``; ranks that planned differently stop with an error.
        batch_size: patches per batch.
        num_workers: DataLoader worker processes decoding on CPU (none with ``gpu_batch``).
        reader_threads: reader threads per worker (cuCIM's loader threads with ``gpu_batch``).
        prefetch_regions: regions read ahead per worker (regions per GPU decode call with
            ``gpu_batch``).
        skip_background: yield only masked patches.
        backend: slide reader backend.
        decode: ``cpu`` (workers decode, pinned memory, non-blocking copies) or ``gpu_batch``
            (cuCIM's batch loader decodes on the GPU in this process), as resolved by
            :func:`hipt.slides.decode.resolve_decode`; only applies on CUDA.
    """

    def __init__(
        self,
        jobs: Sequence[SlideTiles],
        todo: Sequence[int],
        fingerprint: str,
        batch_size: int,
        num_workers: int,
        reader_threads: int,
        prefetch_regions: int,
        skip_background: bool,
        backend: str = "auto",
        decode: str = "cpu",
    ) -> None:
        super().__init__()
        self.jobs = list(jobs)
        self.todo = list(todo)
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.reader_threads = reader_threads
        self.prefetch_regions = prefetch_regions
        self.skip_background = skip_background
        self.backend = backend
        self.decode = decode
        self.positions: list[int] = []
        self.decode_device = "cpu"
        self.pin_memory = False
        self.start_method: str | None = None

    def setup(self, stage: str) -> None:
        """Pick this rank's slides; check every rank planned the same work."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        if trainer is not None and world > 1:
            ref = trainer.strategy.broadcast(self.fingerprint, src=0)
            if ref != self.fingerprint:
                raise HiptError(
                    f"rank {rank} planned other slides than rank 0 ({self.fingerprint} != {ref}); "
                    "were stores written by another run meanwhile?"
                )
        self.positions = shard(self.jobs, self.todo, rank, world)
        root = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if root.type == "cuda" and self.decode == "gpu_batch":
            self.decode_device = str(root)
        self.pin_memory = root.type == "cuda" and self.decode_device == "cpu"
        self.start_method = worker_start_method(root, self.workers)
        if self.start_method and rank == 0:
            log.info("%d DataLoader worker(s) start by %s: CUDA is initialised in this process",
                     self.workers, self.start_method)  # fmt: skip
        n_regions = sum(self.jobs[p].n_regions for p in self.positions)
        log.info(
            "rank %d/%d: %d slide(s), %d region(s)", rank, world, len(self.positions), n_regions
        )

    @property
    def workers(self) -> int:
        """Worker processes: none when this process decodes on the GPU."""
        return 0 if self.decode_device != "cpu" else self.num_workers

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """Move only the pixels; the bookkeeping stays on the host (no device syncs per batch)."""
        if isinstance(batch, PatchBatch):
            return batch._replace(patches=batch.patches.to(device, non_blocking=True))
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def predict_dataloader(self) -> DataLoader[PatchBatch]:
        """Batches of patches of this rank's slides (``batch_size=None``: the stream batches)."""
        stream = RegionStream(
            self.jobs,
            self.positions,
            batch_size=self.batch_size,
            skip_background=self.skip_background,
            prefetch_regions=self.prefetch_regions,
            reader_threads=self.reader_threads,
            backend=self.backend,
            device=self.decode_device,
        )
        workers = self.workers
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=workers,
            multiprocessing_context=self.start_method,
            # batch_size=None hands single items to collate_fn; torch's stub expects lists.
            collate_fn=_identity,  # type: ignore[arg-type]
            worker_init_fn=_worker_init if workers else None,
            prefetch_factor=2 if workers else None,
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )
