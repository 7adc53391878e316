"""ViT-4K: official key layout, grid sizes, and equality with an explicit reference."""

from __future__ import annotations

import pytest
import torch

from hipt.models import Vit4K, bag_to_grid, build
from hipt.models.reference import ExplicitVit4K


def test_official_key_layout() -> None:
    state = build("vit4k_xs").state_dict()
    expected = {
        "cls_token": (1, 1, 192),
        "pos_embed": (1, 197, 192),
        "phi.0.weight": (192, 384),
        "phi.0.bias": (192,),
        "norm.weight": (192,),
        "norm.bias": (192,),
    }
    block = {
        "norm1.weight": (192,),
        "norm1.bias": (192,),
        "attn.qkv.weight": (576, 192),
        "attn.qkv.bias": (576,),
        "attn.proj.weight": (192, 192),
        "attn.proj.bias": (192,),
        "norm2.weight": (192,),
        "norm2.bias": (192,),
        "mlp.fc1.weight": (768, 192),
        "mlp.fc1.bias": (768,),
        "mlp.fc2.weight": (192, 768),
        "mlp.fc2.bias": (192,),
    }
    for i in range(6):
        expected.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert len(state) == 78


@pytest.fixture
def pair() -> tuple[Vit4K, ExplicitVit4K]:
    torch.manual_seed(0)
    ours = build("vit4k_tiny_test").eval()
    ref = ExplicitVit4K(input_dim=32, embed_dim=16, depth=2, num_heads=2).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref


@pytest.mark.parametrize("side", [16, 14, 6])
def test_matches_explicit_reference(pair: tuple[Vit4K, ExplicitVit4K], side: int) -> None:
    ours, ref = pair
    grid = torch.randn(3, 32, side, side)
    with torch.no_grad():
        out = ours(grid)
        torch.testing.assert_close(out, ref(grid), rtol=1e-5, atol=1e-5)
    assert out.shape == (3, 16)


def test_region_bag_through_grid(pair: tuple[Vit4K, ExplicitVit4K]) -> None:
    ours, _ = pair
    bag = torch.randn(2, 256, 32)
    with torch.no_grad():
        tokens = ours.forward_features(bag_to_grid(bag))
    assert tokens.shape == (2, 257, 16)


def test_dims_exposed_and_input_checked() -> None:
    model = build("vit4k_xs")
    assert (model.input_dim, model.embed_dim, model.num_heads) == (384, 192, 6)
    assert all(blk.norm1.eps == blk.norm2.eps == 1e-6 for blk in model.blocks)
    assert model.norm.eps == 1e-6
    with pytest.raises(ValueError, match="bag_to_grid"):
        model(torch.randn(1, 256, 384))


def test_every_parameter_gets_a_gradient() -> None:
    model = build("vit4k_tiny_test").train()
    model(torch.randn(2, 32, 16, 16)).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
