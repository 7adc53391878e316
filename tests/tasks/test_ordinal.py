"""CORN ordinal head against a loop-by-definition reference; stage parsing."""

from __future__ import annotations

import pytest
import torch

from hipt.tasks.ordinal import corn_class_probs, corn_loss, corn_rank, parse_stage


def corn_loss_loop(logits, y):
    """Shi et al. CORN loss by definition: task k uses samples with y >= k, label y > k."""
    total, count = 0.0, 0
    for k in range(logits.shape[1]):
        for b in range(logits.shape[0]):
            if y[b] >= k:
                p = torch.sigmoid(logits[b, k])
                total -= torch.log(p) if y[b] > k else torch.log(1 - p)
                count += 1
    return total / count


def test_corn_loss_equals_definition():
    """Vectorised CORN loss equals the per-task subset definition on random inputs."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (16,), generator=g)
    assert corn_loss(logits, y).item() == pytest.approx(corn_loss_loop(logits, y).item(), rel=1e-10)


def test_corn_probabilities_are_rank_consistent():
    """Class probabilities are >= 0, sum to 1; the rank counts P(y > k) > 0.5."""
    logits = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    probs = corn_class_probs(logits)
    assert (probs >= -1e-7).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(50))
    big = torch.tensor([[5.0, 5.0, -5.0], [-5.0, 5.0, 5.0], [5.0, 5.0, 5.0]])
    assert corn_rank(big).tolist() == [2, 0, 3]


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("I", 1),
        ("iv", 4),
        ("Stage IIA", 2),
        ("stage IIIC", 3),
        ("3", 3),
        ("0", 0),
        ("V", None),
        ("IIII", None),
        ("early", None),
        ("", None),
    ],
)
def test_parse_stage(raw, want):
    """Roman I-IV with optional 'Stage' and sub-stage letter, or integers; else None."""
    assert parse_stage(raw) == want
