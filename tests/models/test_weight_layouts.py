"""Published weight files load strictly in every layout the peers ship, and bad files fail clearly.

A tiny UNI recipe (ViT-L/16 with LayerScale, shrunk to embed 32, depth 2) stands in for the real
model: its state dict is written the way published files are (plain ``torch.save``, ``model.``/
``module.``/``trunk.`` prefixes, ``state_dict``/``model`` wrappers, raw ``.safetensors``), loaded
through ``build(..., checkpoint=)`` into a model initialised differently, and must reproduce the
source model's outputs bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import Tensor, nn

from hipt.models import CheckpointError, build

TINY: dict[str, Any] = {"embed_dim": 32, "depth": 2, "num_heads": 2}
MARKER_NAME = "unpickled.marker"


def _tiny_uni(seed: int, **overrides: Any) -> nn.Module:
    torch.manual_seed(seed)
    return build("uni", **{**TINY, **overrides}).eval()


@pytest.fixture(scope="module")
def source() -> nn.Module:
    """The model whose weights are written (seed 0)."""
    return _tiny_uni(0)


@pytest.fixture(scope="module")
def images() -> Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 224, 224, generator=gen)


def _state(model: nn.Module, prefix: str = "") -> dict[str, Tensor]:
    return {f"{prefix}{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _torch_file(prefix: str = "", wrapper: str | None = None) -> Callable[..., Path]:
    def write(model: nn.Module, path: Path) -> Path:
        state: Any = _state(model, prefix)
        torch.save({wrapper: state} if wrapper else state, path)
        return path

    return write


def _safetensors_file(prefix: str = "", metadata: dict[str, str] | None = None) -> Callable:
    def write(model: nn.Module, path: Path) -> Path:
        safetensors.torch.save_file(_state(model, prefix), str(path), metadata=metadata)
        return path

    return write


LAYOUTS: dict[str, tuple[str, Callable[..., Path]]] = {
    "plain": ("pytorch_model.bin", _torch_file()),
    "model_prefix": ("pytorch_model.bin", _torch_file("model.")),
    "module_prefix": ("ddp.pth", _torch_file("module.")),
    "trunk_prefix": ("open_clip.bin", _torch_file("trunk.")),
    "state_dict_wrapper": ("ckpt.pth", _torch_file(wrapper="state_dict")),
    "model_wrapper": ("ckpt.pt", _torch_file(wrapper="model")),
    "safetensors": ("model.safetensors", _safetensors_file()),
    "safetensors_hf_metadata": ("model.safetensors", _safetensors_file(metadata={"format": "pt"})),
    "safetensors_model_prefix": ("model.safetensors", _safetensors_file("model.")),
}


def test_a_fresh_build_differs_from_the_source(source: nn.Module, images: Tensor):
    """Without a checkpoint, the seed-1 model gives other outputs: the round trips below prove
    that the weights were loaded."""
    with torch.no_grad():
        assert not torch.equal(_tiny_uni(1)(images), source(images))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_published_layouts_load_strictly_and_reproduce_outputs(
    layout: str, source: nn.Module, images: Tensor, tmp_path: Path
):
    """Each published layout loads strictly into a differently initialised model, which then
    holds the source's tensors and gives its outputs exactly."""
    filename, write = LAYOUTS[layout]
    path = write(source, tmp_path / filename)
    torch.manual_seed(1)
    loaded = build("uni", checkpoint=path, **TINY).eval()
    got, want = loaded.state_dict(), source.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    with torch.no_grad():
        assert torch.equal(loaded(images), source(images))


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("layout", ["plain", "safetensors"])
def test_truncated_file_is_one_line_error_naming_it(layout: str, source: nn.Module, tmp_path: Path):
    """A half-downloaded .bin or .safetensors raises CheckpointError in one line naming the
    file."""
    filename, write = LAYOUTS[layout]
    path = _truncate(write(source, tmp_path / filename))
    with pytest.raises(CheckpointError) as info:
        build("uni", checkpoint=path, **TINY)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message


def test_other_architecture_names_the_expected_one_and_the_keys(tmp_path: Path):
    """A kaiko ViT-S state (no LayerScale, one more block) into the UNI recipe fails strictly
    with one line naming 'uni', the missing LayerScale keys and the extra block's keys."""
    torch.manual_seed(0)
    other = build("kaiko_vits16", embed_dim=32, depth=3, num_heads=2)
    path = tmp_path / "kaiko.bin"
    torch.save(_state(other), path)
    with pytest.raises(CheckpointError) as info:
        build("uni", checkpoint=path, **TINY)
    message = str(info.value)
    assert "\n" not in message
    assert "uni" in message and str(path) in message
    assert "blocks.0.ls1.gamma" in message  # missing: UNI's LayerScale
    assert "blocks.2.attn.qkv.weight" in message  # unexpected: the third block


def test_other_width_lists_the_shape_mismatches(tmp_path: Path):
    """A wider state with the same keys fails with the mismatched shapes listed."""
    path = tmp_path / "wide.safetensors"
    safetensors.torch.save_file(_state(_tiny_uni(0, embed_dim=48, num_heads=3)), str(path))
    with pytest.raises(CheckpointError) as info:
        build("uni", checkpoint=path, **TINY)
    message = str(info.value)
    assert "\n" not in message and "uni" in message
    assert "shape mismatches (" in message
    assert "blocks.0.attn.proj.bias (checkpoint [48] vs model [32])" in message


def test_missing_file_names_it(tmp_path: Path):
    """A checkpoint path that does not exist raises CheckpointError naming it."""
    path = tmp_path / "nowhere" / "pytorch_model.bin"
    with pytest.raises(CheckpointError) as info:
        build("uni", checkpoint=path, **TINY)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def _leave_marker(path: str) -> dict[str, Tensor]:
    """Run only if the pickle is executed: proves the object was (wrongly) unpickled."""
    Path(path).write_text("unpickled")
    return {}


class Payload:
    """A pickled object beside the weights; unpickling it runs ``_leave_marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _leave_marker, (self.marker,)


def test_pickled_objects_are_refused_unexecuted(source: nn.Module, tmp_path: Path):
    """A .bin holding a custom object next to the weights is refused (weights_only) in one
    line, and the object's pickle code never runs."""
    marker = tmp_path / MARKER_NAME
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": _state(source), "extra": Payload(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        build("uni", checkpoint=path, **TINY)
    assert not marker.exists()
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert "unpickle" in str(info.value)


def test_an_export_without_its_card_is_not_read_as_raw_weights(source: nn.Module, tmp_path: Path):
    """A .safetensors whose header names an architecture (our export) needs its card: without
    it the load fails instead of silently taking the tensors as published weights."""
    path = tmp_path / "backbone.safetensors"
    safetensors.torch.save_file(_state(source), str(path), metadata={"architecture": "uni"})
    with pytest.raises(CheckpointError) as info:
        build("uni", checkpoint=path, **TINY)
    assert "backbone.json" in str(info.value)  # the missing card is named
