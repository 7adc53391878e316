"""attention_maps equals a hand-written explicit attention and leaves the fast path alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hipt.models import attention_maps, build
from hipt.models.reference import ExplicitVit4K, ExplicitVit256


def _hand_written(block: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) from the block's qkv weights, per head."""
    x = nn.functional.layer_norm(
        tokens, (tokens.shape[-1],), block.norm1.weight, block.norm1.bias, eps=1e-6
    )
    heads = block.attn.num_heads
    q, k, _ = (x @ block.attn.qkv.weight.T + block.attn.qkv.bias).chunk(3, dim=-1)
    b, n, c = q.shape
    q = q.reshape(b, n, heads, c // heads).transpose(1, 2)
    k = k.reshape(b, n, heads, c // heads).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-2, -1) / (c // heads) ** 0.5, dim=-1)


def test_vit256_attention_matches_hand_written_and_reference() -> None:
    torch.manual_seed(0)
    model = build("vit256_tiny_test").eval()
    ref = ExplicitVit256(embed_dim=32, depth=2, num_heads=2).eval()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        maps = attention_maps(model, x)
        # input tokens of the last block, computed with the (fused) blocks before it
        tokens = model.blocks[:-1](model._pos_embed(model.patch_embed(x)))
        torch.testing.assert_close(
            maps, _hand_written(model.blocks[-1], tokens), rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(maps, ref.get_last_selfattention(x), rtol=1e-5, atol=1e-6)
    assert maps.shape == (2, 2, 257, 257)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 257))


def test_vit4k_attention_matches_reference() -> None:
    torch.manual_seed(0)
    model = build("vit4k_tiny_test").eval()
    ref = ExplicitVit4K(input_dim=32, embed_dim=16, depth=2, num_heads=2).eval()
    ref.load_state_dict(model.state_dict())
    grid = torch.randn(1, 32, 16, 16)
    with torch.no_grad():
        maps = attention_maps(model, grid)
        torch.testing.assert_close(maps, ref.get_last_selfattention(grid), rtol=1e-5, atol=1e-6)
    assert maps.shape == (1, 2, 257, 257)


def test_fast_path_and_forward_untouched() -> None:
    model = build("vit256_tiny_test").eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        before = model(x)
        attention_maps(model, x)
        after = model(x)
    assert torch.equal(before, after)
    assert all(blk.attn.fused_attn for blk in model.blocks)
    assert not model.blocks[-1].norm1._forward_hooks


def test_compiled_wrapper_is_unwrapped() -> None:
    model = build("vit4k_tiny_test").eval()
    compiled = torch.compile(model)  # never called: attention_maps uses the eager module
    grid = torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        assert torch.equal(attention_maps(compiled, grid), attention_maps(model, grid))


@pytest.mark.parametrize("name", ["hipt_lgp_tiny_test", "abmil_tiny_test", "meanpool_tiny_test"])
def test_slide_heads_return_region_attention(name: str) -> None:
    head = build(name).eval()
    bag = torch.randn(5, 256, 32)
    mask = torch.tensor([True, True, False, True, True])
    with torch.no_grad():
        maps = attention_maps(head, bag, mask=mask)
        assert torch.equal(maps, head(bag, mask=mask).attention)
    assert maps.shape == (5,) and maps[2] == 0
