"""FeatureScaler against numpy's float64 mean/std, and standardised slide heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hipt.models import build
from hipt.models.scaler import FeatureScaler

HEADS = ["hipt_lgp_tiny_test", "abmil_tiny_test", "meanpool_tiny_test"]


def _rows(n: int, dim: int, seed: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return offset + scale * torch.randn(n, dim, generator=g, dtype=torch.float64)


def test_streamed_fit_equals_numpy_on_all_rows_at_once() -> None:
    """Chan's pairwise merge over uneven batches == numpy's mean/std (ddof=0) of every row,
    even for features whose spread is 1e-5 of their offset (the demo's tiny-encoder case)."""
    x = torch.cat([_rows(37, 6, 0, 1e-2, 1e3), _rows(5, 6, 1, 1e-2, 1e3), _rows(90, 6, 2)])
    batches = [x[:37], x[37:37], x[37:42], x[42:]]  # an empty batch is skipped
    scaler = FeatureScaler(6).fit(batches)
    ref = x.numpy()
    np.testing.assert_allclose(scaler.mean.double().numpy(), ref.mean(0), rtol=1e-6)
    np.testing.assert_allclose(scaler.std.double().numpy(), ref.std(0), rtol=1e-4)
    assert int(scaler.count) == 132 and scaler.fitted


def test_fitted_rows_come_out_standardised_and_unfitted_is_identity() -> None:
    x = _rows(500, 4, 3, scale=0.02, offset=2.5).float()
    scaler = FeatureScaler(4)
    assert not scaler.fitted
    torch.testing.assert_close(scaler(x), x)
    z = scaler.fit([x])(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)


def test_constant_feature_maps_to_zero_not_infinity() -> None:
    """A feature with no spread (e.g. a dead unit) is floored, not divided by zero."""
    x = _rows(50, 3, 4)
    x[:, 1] = 7.0
    scaler = FeatureScaler(3).fit([x])
    z = scaler(torch.cat([x, torch.full((1, 3), 7.0, dtype=torch.float64)]))
    assert torch.isfinite(z).all() and torch.all(z[:, 1] == 0)
    assert FeatureScaler(2).fit([torch.ones(4, 2)]).std.tolist() == [1.0, 1.0]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="no rows"):
        FeatureScaler(3).fit([])
    bad = _rows(4, 3, 5)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        FeatureScaler(3).fit([bad])


def test_statistics_travel_in_the_state_dict() -> None:
    """Checkpoints carry the fitted statistics; strict loading restores the same map."""
    x = _rows(20, 5, 6).float()
    fitted = FeatureScaler(5).fit([x])
    restored = FeatureScaler(5)
    restored.load_state_dict(fitted.state_dict(), strict=True)
    assert restored.fitted
    torch.testing.assert_close(restored(x), fitted(x))


@pytest.mark.parametrize("name", HEADS)
def test_official_keys_unless_asked(name: str) -> None:
    """standardize=false keeps the official state-dict layout; true adds only the buffers."""
    plain = set(build(name).state_dict())
    scaled = set(build(name, standardize=True).state_dict())
    assert not any(k.startswith("scaler.") for k in plain)
    assert scaled - plain == {"scaler.mean", "scaler.std", "scaler.count"}


def _instances(name: str, seed: int) -> torch.Tensor:
    """A region bag in the head's input: ``[M, 16]`` region embeddings or ``[M, 256, 32]``."""
    g = torch.Generator().manual_seed(seed)
    shape = (5, 16) if name.startswith("hipt_lgp") else (3, 256, 32)
    return torch.randn(*shape, generator=g)


@pytest.mark.parametrize("name", HEADS)
def test_refitted_head_ignores_per_feature_affine_changes(name: str) -> None:
    """What standardising buys: a head fitted on ``x`` and the same head refitted on
    ``a * x + b`` (per-feature a > 0, b) give the same outputs, whatever the features' scale."""
    kwargs = {"vit4k": None} if name.startswith("hipt_lgp") else {}
    torch.manual_seed(0)
    model = build(name, standardize=True, **kwargs).eval()
    bags = [_instances(name, s) for s in range(4)]
    width = bags[0].shape[-1]
    a = torch.empty(width).uniform_(1e-3, 1e-2)  # tiny spread, like a barely trained encoder
    b = torch.empty(width).uniform_(-50, 50)
    moved = [bag * a + b for bag in bags]
    with torch.no_grad():
        model.scaler.fit(model.scaler_inputs(bag) for bag in bags)
        ref = [model(bag) for bag in bags]
        model.scaler.fit(model.scaler_inputs(bag) for bag in moved)
        out = [model(bag) for bag in moved]
    for r, o in zip(ref, out, strict=True):
        torch.testing.assert_close(o.logits, r.logits, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(o.attention, r.attention, rtol=1e-3, atol=1e-4)
