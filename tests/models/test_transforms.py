"""uint8 RGB -> normalized float, bit-identical to torchvision ToTensor + Normalize(0.5, 0.5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hipt.models import normalize_patches, vit256_transform


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)


def test_matches_torchvision_exactly(image: np.ndarray) -> None:
    tvt = pytest.importorskip("torchvision.transforms")
    ref = tvt.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(tvt.ToTensor()(image))
    assert torch.equal(vit256_transform()(image), ref)


def test_manual_formula(image: np.ndarray) -> None:
    out = normalize_patches(image)
    manual = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    assert out.shape == (3, 256, 256)
    torch.testing.assert_close(out, manual, rtol=0, atol=1e-6)
    assert out.min() >= -1 and out.max() <= 1


def test_batched_layouts_agree(image: np.ndarray) -> None:
    batch_hwc = torch.from_numpy(np.stack([image, image[::-1].copy()]))
    batch_chw = batch_hwc.permute(0, 3, 1, 2).contiguous()
    out_hwc = normalize_patches(batch_hwc)
    assert out_hwc.shape == (2, 3, 256, 256)
    assert torch.equal(out_hwc, normalize_patches(batch_chw))
    assert torch.equal(out_hwc[0], normalize_patches(image))


def test_rejects_float_and_ambiguous_input() -> None:
    with pytest.raises(TypeError):
        normalize_patches(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="layout"):
        normalize_patches(torch.zeros(8, 8, 8, dtype=torch.uint8))
    out = normalize_patches(torch.zeros(3, 3, 3, dtype=torch.uint8), layout="chw")
    assert torch.equal(out, torch.full((3, 3, 3), -1.0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensor(image: np.ndarray) -> None:
    out = normalize_patches(torch.from_numpy(image).cuda())
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), normalize_patches(image))
