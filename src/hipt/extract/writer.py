"""Prediction writer: one atomic Zarr store per slide, finalized when its last region lands."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from tqdm import tqdm

from hipt.extract.module import EncodedRegions
from hipt.features.schema import FeatureStoreMeta
from hipt.features.store import StoreWriter, store_path
from hipt.slides.tiles import SlideTiles

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SlideResult:
    """Outcome of one slide on the rank that owned it."""

    slide_id: str
    status: str  # "ok" | "failed"
    n_regions: int
    seconds: float = 0.0
    error: str | None = None


class SlideStoreSink:
    """Routes finished regions to per-slide :class:`StoreWriter` s and records outcomes.

    A store is opened at its slide's first region and finalized (renamed into place) when all
    ``M`` regions are written; a read or write failure aborts it, so no partial store survives.

    Args:
        out: output folder.
        jobs: every slide of the run.
        metas: expected store metadata per job.
        regions_per_chunk: regions per Zarr chunk.
        on_done: called with each finished :class:`SlideResult`.
    """

    def __init__(
        self,
        out: Path,
        jobs: Sequence[SlideTiles],
        metas: Sequence[FeatureStoreMeta],
        regions_per_chunk: int = 1,
        on_done: Callable[[SlideResult], None] | None = None,
    ) -> None:
        self.out = Path(out)
        self.jobs = jobs
        self.metas = metas
        self.regions_per_chunk = regions_per_chunk
        self.on_done = on_done
        self.results: dict[int, SlideResult] = {}
        self._open: dict[int, StoreWriter] = {}
        self._written: dict[int, int] = {}
        self._started: dict[int, float] = {}

    def _writer(self, pos: int) -> StoreWriter:
        if pos not in self._open:
            job = self.jobs[pos]
            self._open[pos] = StoreWriter(
                store_path(self.out, job.slide_id),
                self.metas[pos],
                job.coords,
                job.patch_mask,
                regions_per_chunk=self.regions_per_chunk,
            )
            self._written[pos] = 0
        return self._open[pos]

    def start(self, pos: int) -> None:
        """Note when a slide's work began (for its ``seconds``)."""
        self._started.setdefault(pos, time.perf_counter())

    def write(self, enc: EncodedRegions) -> int:
        """Store the regions of one predict step; returns how many were written."""
        for pos, msg in enc.failed:
            self.fail(pos, msg)
        n = 0
        for i, (pos, region) in enumerate(
            zip(enc.slide.tolist(), enc.region.tolist(), strict=True)
        ):
            if pos in self.results:
                continue  # slide already failed (regions still in flight from other readers)
            self.start(pos)
            try:
                self._writer(pos).write(region, enc.feats256[i : i + 1], enc.feats4k[i : i + 1])
                self._written[pos] += 1
                n += 1
                if self._written[pos] == self.jobs[pos].n_regions:
                    self._finalize(pos)
            except Exception as exc:  # noqa: BLE001 - a bad store fails its slide only
                self.fail(pos, f"writing {store_path(self.out, self.jobs[pos].slide_id)}: {exc}")
        return n

    def _finalize(self, pos: int) -> None:
        path = self._open.pop(pos).finalize()
        job = self.jobs[pos]
        secs = time.perf_counter() - self._started.get(pos, time.perf_counter())
        self._record(pos, SlideResult(job.slide_id, "ok", job.n_regions, round(secs, 3)))
        log.debug("%s: %d regions -> %s", job.slide_id, job.n_regions, path)

    def fail(self, pos: int, msg: str) -> None:
        """Abort the slide's store and record the failure (once)."""
        if pos in self.results:
            return
        writer = self._open.pop(pos, None)
        if writer is not None:
            writer.abort()
        job = self.jobs[pos]
        log.error("slide %s failed: %s", job.slide_id, msg)
        self._record(pos, SlideResult(job.slide_id, "failed", job.n_regions, error=msg))

    def _record(self, pos: int, result: SlideResult) -> None:
        self.results[pos] = result
        if self.on_done is not None:
            self.on_done(result)

    def close(self, expected: Sequence[int]) -> None:
        """End of stream: any slide of ``expected`` not finished is a failure."""
        for pos in expected:
            if pos not in self.results:
                got = self._written.get(pos, 0)
                self.fail(pos, f"only {got}/{self.jobs[pos].n_regions} regions were encoded")

    def abort_all(self) -> None:
        """Drop every open temporary store (exception or interrupt)."""
        for writer in self._open.values():
            writer.abort()
        self._open.clear()


class FeatureWriter(BasePredictionWriter):
    """Lightning callback: writes each step's finished regions, shows progress, logs to W&B.

    After predict, :attr:`all_results` on rank 0 holds every rank's :class:`SlideResult` s.

    Args:
        sink: the store router of this process.
        progress: show a tqdm bar over regions (rank 0 only).
    """

    def __init__(self, sink: SlideStoreSink, progress: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.sink = sink
        self.progress = progress
        self.positions: list[int] = []
        self.all_results: list[SlideResult] = []
        self.regions_done = 0
        self._bar: tqdm | None = None
        self._t0 = 0.0
        self._trainer: Trainer | None = None

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Learn this rank's slides from the datamodule and open the progress bar."""
        self._trainer = trainer
        # Lightning sets Trainer.datamodule at runtime without declaring it on the class.
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        self.positions = list(getattr(datamodule, "positions", []))
        self.sink.on_done = self._slide_done
        total = sum(self.sink.jobs[p].n_regions for p in self.positions)
        self._t0 = time.perf_counter()
        show = self.progress and trainer.is_global_zero
        self._bar = tqdm(total=total, unit="region", desc="extract", disable=not show or None)
        self._update_postfix()

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Store the regions ``predict_step`` finished."""
        for pos in set(batch.slide.tolist()):
            self.sink.start(pos)
        n = self.sink.write(prediction)
        self.regions_done += n
        if self._bar is not None and n:
            self._bar.update(n)

    def _slide_done(self, result: SlideResult) -> None:
        self._update_postfix()
        trainer = self._trainer
        if trainer is None or trainer.logger is None:
            return
        secs = max(time.perf_counter() - self._t0, 1e-9)
        failures = sum(r.status == "failed" for r in self.sink.results.values())
        trainer.logger.log_metrics(
            {
                "extract/regions_per_s": self.regions_done / secs,
                "extract/regions_done": self.regions_done,
                "extract/slides_done": len(self.sink.results),
                "extract/failures": failures,
            },
            step=len(self.sink.results),
        )

    def _update_postfix(self) -> None:
        if self._bar is not None:
            done = len(self.sink.results)
            failed = sum(r.status == "failed" for r in self.sink.results.values())
            self._bar.set_postfix_str(f"slides {done}/{len(self.positions)} failed {failed}")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fail unfinished slides, close the bar and gather every rank's results on rank 0."""
        self.sink.close(self.positions)
        if self._bar is not None:
            self._bar.close()
        mine = [dataclasses.asdict(r) for r in self.sink.results.values()]
        gathered = [mine]
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered = [None] * trainer.world_size  # type: ignore[list-item]
            torch.distributed.all_gather_object(gathered, mine)
        self.all_results = [SlideResult(**r) for rank in gathered for r in rank]

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """Leave no temporary store behind."""
        self.sink.abort_all()
        if self._bar is not None:
            self._bar.close()
