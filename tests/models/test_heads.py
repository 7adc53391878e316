"""Slide heads: shapes, permutation and padding invariance, gradients, frozen ViT-4K."""

from __future__ import annotations

import pytest
import torch

from hipt.models import HiptLGP, SlideOutput, build

HEADS = ["hipt_lgp_tiny_test", "abmil_tiny_test", "meanpool_tiny_test"]


def _bag(m: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, 256, 32, generator=torch.Generator().manual_seed(seed))


def test_official_size_hipt_lgp_on_a_38_region_bag() -> None:
    model = build("hipt_lgp").eval()
    with torch.no_grad():
        out = model(torch.randn(38, 256, 384))
    assert isinstance(out, SlideOutput)
    assert out.logits.shape == (1, 2) and out.attention.shape == (38,)
    torch.testing.assert_close(out.attention.sum(), torch.tensor(1.0))


def test_region_features_input_without_vit4k() -> None:
    model = build("hipt_lgp", vit4k=None, n_outputs=4).eval()
    assert model.local_vit is None
    assert sum(p.numel() for p in model.parameters()) == 595_011 + 2 * (192 + 1)  # 4 outputs, not 2
    with torch.no_grad():
        out = model(torch.randn(7, 192))
    assert out.logits.shape == (1, 4)
    with pytest.raises(ValueError, match="no local_vit"):
        model(torch.randn(7, 256, 384))


def test_precomputed_region_features_skip_the_vit4k() -> None:
    model = build("hipt_lgp_tiny_test").eval()
    bag = _bag(4)
    with torch.no_grad():
        feats = model.local_vit(bag.unfold(1, 16, 16).transpose(1, 2))
        torch.testing.assert_close(model(feats).logits, model(bag).logits)


@pytest.mark.parametrize("name", HEADS)
def test_invariant_to_region_order(name: str) -> None:
    model = build(name).eval()
    bag = _bag(9)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, shuffled = model(bag), model(bag[perm])
    torch.testing.assert_close(shuffled.logits, out.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shuffled.attention, out.attention[perm], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("grad", [False, True])
def test_padding_changes_nothing(name: str, grad: bool) -> None:
    model = build(name).eval()
    bag = _bag(6)
    junk = 1e3 * _bag(3, seed=5)
    junk[0, 0, 0] = float("nan")  # even non-finite padding must not leak
    padded = torch.cat([bag[:2], junk[:2], bag[2:], junk[2:]])
    mask = torch.tensor([True, True, False, False, True, True, True, True, False])
    with torch.set_grad_enabled(grad):
        ref, out = model(bag), model(padded, mask=mask)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.attention[mask], ref.attention, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.attention[~mask], torch.zeros(3))


def test_per_patch_mask_for_baselines() -> None:
    model = build("abmil_tiny_test").eval()
    bag = _bag(3)
    mask = torch.ones(3, 256, dtype=torch.bool)
    mask[1, 100:] = False
    with torch.no_grad():
        out = model(bag, mask=mask)
        ref = model(bag.reshape(-1, 32)[mask.reshape(-1)])
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-6)


def test_bad_masks() -> None:
    model = build("hipt_lgp_tiny_test").eval()
    with pytest.raises(ValueError, match="no valid"):
        model(_bag(3), mask=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        model(_bag(3), mask=torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize("name", HEADS)
def test_every_trainable_parameter_gets_a_gradient(name: str) -> None:
    torch.manual_seed(0)
    model = build(name, n_classes=3).train()
    out = model(_bag(5), mask=torch.tensor([True, True, True, True, False]))
    assert out.logits.shape == (1, 3)
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([1])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_frozen_vit4k_gets_no_gradient_and_stays_in_eval() -> None:
    model = build("hipt_lgp_tiny_test", freeze_4k=True).train()
    assert isinstance(model, HiptLGP) and model.local_vit is not None
    assert not model.local_vit.training and model.global_phi.training
    model.logits_sum = None  # plain attribute, not a parameter
    out = model(_bag(4))
    out.logits.sum().backward()
    for name, p in model.named_parameters():
        if name.startswith("local_vit."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
