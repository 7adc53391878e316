"""GPU decode paths, proven on CPU: routing, cuCIM's batch loader calls and its fallbacks.

No GPU runs here. cuCIM's batch loader is replaced by a recording fake that serves the real
CPU-decoded pixels of the sample slide (and can fail like ``cudaMalloc``), and the one
device-specific step (viewing the loader's buffer as a tensor) returns CPU tensors, so the
reader's own logic (chunking, tile checks, copies, whitening, fallbacks) runs unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hipt.errors import ConfigError
from hipt.extract.datamodule import ExtractDataModule
from hipt.slides import decode as decode_mod
from hipt.slides.cucim_reader import CuCIMReader
from hipt.slides.decode import resolve_decode
from hipt.slides.readers import open_slide
from hipt.slides.tiles import load_tiles


class FakeGpuLoader:
    """Stands in for cuCIM's image: CPU reads pass through, ``device=`` batch reads are
    recorded and answered from real CPU decoding (as RGBA, like cuCIM on some files)."""

    def __init__(self, real, fail_after: int | None = None) -> None:
        self.real = real
        self.calls: list[dict] = []
        self.fail_after = fail_after
        self.served = 0

    def read_region(self, location, size=None, level=0, **kw):
        if "device" not in kw:
            return self.real.read_region(location, size, level, **kw)
        self.calls.append({"n": len(location), "size": size, "level": level, **kw})

        def batches():
            locs = list(location)
            for i in range(0, len(locs), kw["batch_size"]):
                if self.fail_after is not None and self.served >= self.fail_after:
                    raise MemoryError("cudaMalloc failed: out of memory")
                part = [
                    np.asarray(self.real.read_region(xy, size, level))
                    for xy in locs[i : i + kw["batch_size"]]
                ]  # noqa: E501
                rgba = [
                    np.concatenate([p, np.full((*p.shape[:2], 1), 255, np.uint8)], -1) for p in part
                ]  # noqa: E501
                self.served += len(part)
                yield np.stack(rgba)

        return batches()


@pytest.fixture
def gpu_reader(sample_path: Path, monkeypatch):
    reader = open_slide(sample_path, backend="cucim")
    assert isinstance(reader, CuCIMReader)
    # The two device steps (view of the loader's GPU buffer; upload of a CPU-decoded region)
    # stay on CPU here; everything around them is the reader's own code.
    monkeypatch.setattr(
        CuCIMReader, "_on_device", staticmethod(lambda b, dev: torch.from_numpy(np.asarray(b)))
    )  # noqa: E501
    monkeypatch.setattr(CuCIMReader, "_upload", staticmethod(lambda chw, dev: chw.contiguous()))
    yield reader
    reader.close()


LOCS = [(0, 0), (1024, 512), (1800, 2600), (-100, 2900)]  # the last two cross the slide edge


def _cpu_reference(reader, locs, size=512):
    return [
        torch.from_numpy(reader.read_region(x, y, 0, size, size)).permute(2, 0, 1) for x, y in locs
    ]  # noqa: E501


def test_batch_decode_calls_cucims_loader_and_equals_cpu_pixels(gpu_reader):
    """gpu_batch: one loader call per chunk with the batch size, workers and device asked for;
    each region is a copy, RGB only, white outside the slide, equal to the CPU read."""
    want = _cpu_reference(gpu_reader, LOCS)
    fake = FakeGpuLoader(gpu_reader._img)
    gpu_reader._img = fake
    got = list(gpu_reader.read_regions_tensor(LOCS, 0, 512, 512, "cuda:0", num_workers=3,
                                              batch_size=2))  # fmt: skip
    assert fake.calls == [{"n": 4, "size": (512, 512), "level": 0, "num_workers": 3,
                           "batch_size": 2, "drop_last": False, "device": "cuda:0"}]  # fmt: skip
    assert [g.shape for g in got] == [(3, 512, 512)] * 4
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    assert (got[3][:, :, :100] == 255).all()  # left of the slide: white, not black


def test_out_of_gpu_memory_falls_back_to_cpu_for_the_rest_with_one_warning(gpu_reader, caplog):
    want = _cpu_reference(gpu_reader, LOCS)
    gpu_reader._img = FakeGpuLoader(gpu_reader._img, fail_after=2)
    with caplog.at_level(logging.WARNING):
        got = list(gpu_reader.read_regions_tensor(LOCS, 0, 512, 512, "cuda:0", batch_size=2))
    assert len(got) == 4 and all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "GPU memory is exhausted" in warnings[0]
    assert gpu_reader._gpu_ok is not False  # memory may free up: the next slide tries again


def test_reads_larger_than_the_level_go_to_cpu_without_a_warning(gpu_reader, caplog):
    """cuCIM refuses reads larger than the level: those are read on CPU, as the contract
    expects, and that is not reported as a GPU failure."""
    fake = FakeGpuLoader(gpu_reader._img)
    gpu_reader._img = fake
    with caplog.at_level(logging.WARNING):
        (got,) = gpu_reader.read_regions_tensor([(0, 0)], 0, 4104, 4104, "cuda:0")
    assert not fake.calls and not caplog.records
    assert got.shape == (3, 4104, 4104) and (got[:, :, 2220:] == 255).all()


def test_decode_setting_resolves_to_a_recorded_path(monkeypatch):
    """auto = cpu (the measured default); gpu_batch only on CUDA with cuCIM's CUDA deps;
    the nvImageCodec plugin (cuslide2) is enabled where installed."""
    assert resolve_decode("auto", "cuda").mode == "cpu"
    assert "measured default" in resolve_decode("auto", "cuda").reason
    assert resolve_decode("gpu_batch", "cpu").mode == "cpu"
    monkeypatch.setattr(decode_mod, "_installed", lambda m: False)
    with pytest.raises(ConfigError, match="make setup-gpu"):
        resolve_decode("gpu_batch", "cuda")
    with pytest.raises(ConfigError, match="cuCIM backend"):
        resolve_decode("gpu_batch", "cuda", backend="openslide")
    monkeypatch.setattr(decode_mod, "_installed", lambda m: True)
    # recorded by monkeypatch first, so the value resolve_decode sets is undone afterwards
    # (a leaked ENABLE_CUSLIDE2=1 makes cuCIM refuse TIFFs where nvImageCodec is missing)
    monkeypatch.setenv(decode_mod.CUSLIDE2_ENV, "unset-below")
    monkeypatch.delenv(decode_mod.CUSLIDE2_ENV)
    plan = resolve_decode("gpu_batch", "cuda")
    assert (plan.mode, plan.plugin) == ("gpu_batch", "cuslide2")
    import os

    assert os.environ[decode_mod.CUSLIDE2_ENV] == "1"
    with pytest.raises(ConfigError, match="decode must be one of"):
        resolve_decode("gpu", "cuda")


def _module(tiles: Path, decode: str, root: str, workers: int = 2) -> ExtractDataModule:
    jobs = load_tiles(tiles).slides
    dm = ExtractDataModule(jobs, list(range(len(jobs))), "fp", 8, workers, 1, 2, False,
                           decode=decode)  # fmt: skip
    dm.trainer = SimpleNamespace(
        global_rank=0,
        world_size=1,  # type: ignore[assignment]
        strategy=SimpleNamespace(root_device=torch.device(root)),
    )
    dm.setup("predict")
    return dm


def test_loader_routing_on_a_cuda_root_device(sample_tiles):
    """On CUDA: cpu decode keeps worker processes, pins memory and starts workers by
    forkserver (CUDA is live in the parent); gpu_batch decodes in-process; CPU runs fork."""
    cpu_dec = _module(sample_tiles, "cpu", "cuda:0")
    assert (cpu_dec.workers, cpu_dec.pin_memory, cpu_dec.decode_device) == (2, True, "cpu")
    assert cpu_dec.start_method == "forkserver"
    gpu_dec = _module(sample_tiles, "gpu_batch", "cuda:0")
    assert (gpu_dec.workers, gpu_dec.pin_memory, gpu_dec.decode_device) == (0, False, "cuda:0")
    assert gpu_dec.start_method is None
    on_cpu = _module(sample_tiles, "gpu_batch", "cpu")
    assert (on_cpu.workers, on_cpu.pin_memory, on_cpu.start_method) == (2, False, None)
    loader = cpu_dec.predict_dataloader()
    assert loader.num_workers == 2 and loader.pin_memory
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
