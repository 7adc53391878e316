"""ViT-256 against an independent explicit-attention ViT computed the DINO way."""

from __future__ import annotations

import pytest
import torch

from hipt.models import Vit256, build, prepare_images, prepare_model
from hipt.models.reference import ExplicitVit256


@pytest.fixture
def pair() -> tuple[Vit256, ExplicitVit256]:
    torch.manual_seed(0)
    ours = build("vit256_tiny_test").eval()
    ref = ExplicitVit256(embed_dim=32, depth=2, num_heads=2).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)  # same key layout as the official file
    return ours, ref


@pytest.mark.parametrize("size", [256, 224, 96])
def test_matches_explicit_reference(pair: tuple[Vit256, ExplicitVit256], size: int) -> None:
    ours, ref = pair
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        out = ours(x)
        torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)
    assert out.shape == (3, ours.embed_dim)


def test_output_is_normed_cls_token(pair: tuple[Vit256, ExplicitVit256]) -> None:
    ours, _ = pair
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        tokens = ours.forward_features(x)
        assert tokens.shape == (2, 257, 32)
        assert torch.equal(ours(x), tokens[:, 0])


def test_architecture_fields() -> None:
    model = build("vit256_small")
    assert model.embed_dim == 384
    assert model.pos_embed.shape == (1, 197, 384)
    assert model.patch_size == 16
    assert all(blk.attn.fused_attn for blk in model.blocks)  # SDPA fast path on
    assert all(blk.norm1.eps == 1e-6 for blk in model.blocks)


def test_batch_independence(pair: tuple[Vit256, ExplicitVit256]) -> None:
    ours, _ = pair
    x = torch.randn(4, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[1:2], ours(x[1:2]), rtol=1e-5, atol=1e-6)


def test_every_parameter_gets_a_gradient() -> None:
    model = build("vit256_tiny_test").train()
    model(torch.randn(2, 3, 256, 256)).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_drop_path_override() -> None:
    model = build("vit256_tiny_test", drop_path_rate=0.1)
    assert type(model.blocks[-1].drop_path1).__name__ == "DropPath"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_channels_last_close_to_fp32(pair: tuple[Vit256, ExplicitVit256]) -> None:
    ours, _ = pair
    x = torch.randn(4, 3, 256, 256)
    with torch.no_grad():
        ref = ours(x)
        model = prepare_model(ours, "cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(prepare_images(x, "cuda")).float().cpu()
    torch.testing.assert_close(out, ref, rtol=5e-2, atol=5e-2)
