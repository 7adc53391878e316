"""Streams a rank's regions as fixed-size batches of 256-px patches with bounded read-ahead."""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from hipt.errors import one_line
from hipt.slides.geometry import open_slide_at
from hipt.slides.pixels import read_region, read_regions, unfold_patches
from hipt.slides.readers import SlideReader
from hipt.slides.tiles import SlideTiles

log = logging.getLogger(__name__)


class PatchBatch(NamedTuple):
    """One ViT-256 forward's worth of patches plus what they belong to.

    Attributes:
        patches: uint8 ``[B, 3, P, P]`` (on the decode device).
        slide: int64 ``[B]`` position of each patch's slide in the job list (CPU).
        region: int64 ``[B]`` region index within the slide.
        patch: int64 ``[B]`` row-major patch index (``row * 16 + col``).
        expected: int64 ``[B]`` patches of that region that are encoded at all.
        empty: int64 ``[E, 2]`` (slide, region) pairs with nothing to encode (skip_background).
        failed: (slide position, one-line error) of slides that failed to read.
    """

    patches: Tensor
    slide: Tensor
    region: Tensor
    patch: Tensor
    expected: Tensor
    empty: Tensor
    failed: list[tuple[int, str]]


class _Chunk(NamedTuple):
    slide: int
    region: int
    patches: Tensor  # [n, 3, P, P]
    ids: Tensor  # [n] int64
    expected: int


class RegionStream(IterableDataset[PatchBatch]):
    """Reads the regions of ``positions`` and yields :class:`PatchBatch` of ``batch_size`` patches.

    Work split: region ``k`` of this rank's region list goes to DataLoader worker
    ``k % num_workers``; inside a worker ``reader_threads`` threads read ahead at most
    ``prefetch_regions`` regions, so memory is bounded by batch + read-ahead, never by slide size.
    A region that fails to read marks its slide failed (reported once in the next batch) and the
    slide's remaining regions are skipped; the stream goes on with the next slide.

    Args:
        jobs: every slide of the run (positions index into it).
        positions: the slides of this rank, in processing order.
        batch_size: patches per yielded batch (the last one of a stream may be smaller).
        skip_background: yield only masked patches (others are filled downstream).
        prefetch_regions: regions read ahead per worker.
        reader_threads: threads reading regions per worker.
        backend: slide reader backend.
        device: where regions are decoded: ``cpu`` (reader threads), or ``cuda:N``: GPU batch
            decoding in this process (``reader_threads`` loader threads, ``prefetch_regions``
            regions per decode call).
    """

    def __init__(
        self,
        jobs: Sequence[SlideTiles],
        positions: Sequence[int],
        batch_size: int,
        skip_background: bool = False,
        prefetch_regions: int = 2,
        reader_threads: int = 1,
        backend: str = "auto",
        device: str = "cpu",
    ) -> None:
        super().__init__()
        self.jobs = list(jobs)
        self.positions = list(positions)
        self.batch_size = batch_size
        self.skip_background = skip_background
        self.prefetch = max(1, prefetch_regions)
        self.threads = max(1, reader_threads)
        self.backend = backend
        self.device = torch.device(device)

    def tasks(self, worker: int = 0, num_workers: int = 1) -> list[tuple[int, int]]:
        """(slide position, region index) pairs read by ``worker``, in order."""
        allt = [(p, r) for p in self.positions for r in range(self.jobs[p].n_regions)]
        return allt[worker::num_workers]

    def __iter__(self) -> Iterator[PatchBatch]:
        info = get_worker_info()
        worker, n = (info.id, info.num_workers) if info is not None else (0, 1)
        return self._stream(self.tasks(worker, n))

    # -- reading ------------------------------------------------------------------------------
    def _read(self, reader: SlideReader, job: SlideTiles, region: int) -> Tensor:
        x, y = (int(v) for v in job.coords[region])
        img = read_region(reader, job.geometry, x, y, self.device)
        return unfold_patches(img, job.geometry.patch_px)

    def _device_reads(
        self, tasks: list[tuple[int, int]]
    ) -> Iterator[tuple[int, int, Tensor | BaseException]]:
        """GPU batch decoding in this process: per slide, the reader's batch loader.

        ``reader_threads`` are the loader's decode threads, ``prefetch_regions`` its regions per
        GPU decode call. A failed region ends its slide (the rest is skipped upstream).
        """
        torch.cuda.set_device(self.device)
        for pos, group in itertools.groupby(tasks, key=lambda task: task[0]):
            regions = [r for _, r in group]
            job = self.jobs[pos]
            try:
                reader = open_slide_at(job.geometry, backend=self.backend)
            except Exception as exc:  # noqa: BLE001 - reported per slide
                yield pos, regions[0], exc
                continue
            try:
                coords = [(int(job.coords[r][0]), int(job.coords[r][1])) for r in regions]
                images = read_regions(reader, job.geometry, coords, self.device, self.threads,
                                      self.prefetch)  # fmt: skip
                for region in regions:
                    try:
                        img = next(images)
                    except Exception as exc:  # noqa: BLE001 - a bad region fails its slide
                        yield pos, region, exc
                        break
                    yield pos, region, unfold_patches(img, job.geometry.patch_px)
            finally:
                reader.close()

    def _reads(
        self, tasks: list[tuple[int, int]], failed: set[int]
    ) -> Iterator[tuple[int, int, Tensor | BaseException]]:
        """(slide, region, patches or the read error), in task order, ``prefetch`` ahead."""
        if self.device.type == "cuda":
            yield from self._device_reads(tasks)
            return
        readers: dict[int, SlideReader | BaseException] = {}
        lock = threading.Lock()

        def reader_for(pos: int) -> SlideReader:
            with lock:
                if pos not in readers:
                    try:
                        readers[pos] = open_slide_at(self.jobs[pos].geometry, backend=self.backend)
                    except Exception as exc:  # noqa: BLE001 - reported per slide
                        readers[pos] = exc
                got = readers[pos]
            if isinstance(got, BaseException):
                raise got
            return got

        def work(pos: int, region: int) -> Tensor | BaseException:
            if pos in failed:
                return RuntimeError("slide already failed")
            try:
                return self._read(reader_for(pos), self.jobs[pos], region)
            except Exception as exc:  # noqa: BLE001 - a bad region fails its slide only
                return exc

        pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="hipt-rr")
        pending: collections.deque[tuple[int, int, concurrent.futures.Future[Any]]]
        pending = collections.deque()
        todo = iter(tasks)
        current = -1
        try:
            while True:
                while len(pending) < self.prefetch:
                    nxt = next(todo, None)
                    if nxt is None:
                        break
                    pending.append((*nxt, pool.submit(work, *nxt)))
                if not pending:
                    return
                pos, region, fut = pending.popleft()
                if pos != current:  # tasks are grouped by slide: earlier slides are done
                    self._close(readers, lock, keep={pos} | {p for p, _, _ in pending})
                    current = pos
                yield pos, region, fut.result()
        finally:
            for *_, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True)
            self._close(readers, lock, keep=set())

    @staticmethod
    def _close(readers: dict[int, Any], lock: threading.Lock, keep: set[int]) -> None:
        with lock:
            for pos in [p for p in readers if p not in keep]:
                got = readers.pop(pos)
                if not isinstance(got, BaseException):
                    got.close()

    # -- batching -----------------------------------------------------------------------------
    def _stream(self, tasks: list[tuple[int, int]]) -> Iterator[PatchBatch]:
        pending: collections.deque[_Chunk] = collections.deque()
        n_pending = 0
        failed: set[int] = set()
        new_failed: list[tuple[int, str]] = []
        empty: list[tuple[int, int]] = []
        for pos, region, got in self._reads(tasks, failed):
            if pos in failed:
                continue
            if isinstance(got, BaseException):
                failed.add(pos)
                new_failed.append((pos, self._message(pos, got)))
                kept = [c for c in pending if c.slide != pos]
                pending = collections.deque(kept)
                n_pending = sum(len(c.ids) for c in kept)
                continue
            chunk = self._chunk(pos, region, got)
            if chunk is None:
                empty.append((pos, region))
                continue
            pending.append(chunk)
            n_pending += len(chunk.ids)
            while n_pending >= self.batch_size:
                yield self._take(pending, self.batch_size, new_failed, empty)
                n_pending -= self.batch_size
                new_failed, empty = [], []
        if n_pending or new_failed or empty:
            yield self._take(pending, n_pending, new_failed, empty)

    def _chunk(self, pos: int, region: int, patches: Tensor) -> _Chunk | None:
        n = patches.shape[0]
        if not self.skip_background:
            return _Chunk(pos, region, patches, torch.arange(n), n)
        mask = torch.from_numpy(self.jobs[pos].patch_mask[region])
        ids = torch.nonzero(mask).flatten()
        if ids.numel() == 0:
            return None
        return _Chunk(pos, region, patches[ids.to(patches.device)], ids, int(ids.numel()))

    def _message(self, pos: int, exc: BaseException) -> str:
        return one_line(exc, self.jobs[pos].path)

    def _take(
        self,
        pending: collections.deque[_Chunk],
        n: int,
        failed: list[tuple[int, str]],
        empty: list[tuple[int, int]],
    ) -> PatchBatch:
        """Pop ``n`` patches off the front of ``pending`` (splitting a chunk if needed)."""
        parts: list[Tensor] = []
        rows: dict[str, list[Tensor]] = {"slide": [], "region": [], "patch": [], "expected": []}
        need = n
        while need:
            c = pending[0]
            k = min(need, len(c.ids))
            parts.append(c.patches[:k])
            for key, value in (("slide", c.slide), ("region", c.region), ("expected", c.expected)):
                rows[key].append(torch.full((k,), value, dtype=torch.long))
            rows["patch"].append(c.ids[:k].long())
            if k == len(c.ids):
                pending.popleft()
            else:
                pending[0] = c._replace(patches=c.patches[k:], ids=c.ids[k:])
            need -= k
        if parts:
            patches = torch.cat(parts)
        else:
            patches = torch.empty((0, 3, 1, 1), dtype=torch.uint8, device=self.device)
        col = {k: torch.cat(v) if v else torch.empty(0, dtype=torch.long) for k, v in rows.items()}
        return PatchBatch(
            patches=patches,
            slide=col["slide"],
            region=col["region"],
            patch=col["patch"],
            expected=col["expected"],
            empty=torch.tensor(empty, dtype=torch.long).reshape(-1, 2),
            failed=list(failed),
        )
