"""Pieces every slide head shares: the output type, gated attention and masked pooling."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["GatedAttention", "SlideOutput", "masked_attention_pool", "valid_mask"]


class SlideOutput(NamedTuple):
    """Output of a slide head for one bag.

    Attributes:
        logits: ``[1, C]``.
        attention: ``[M]`` weight of each region (sums to 1 over valid regions, 0 on padding).
    """

    logits: Tensor
    attention: Tensor


class GatedAttention(nn.Module):
    """Gated attention scores ``c(tanh(a x) * sigmoid(b x))`` [0] (Ilse et al. 2018).

    Args:
        dim: input width L.
        hidden_dim: attention width D.
        dropout: dropout after each gate branch.
    """

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.25) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, hidden_dim), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = nn.Sequential(
            nn.Linear(dim, hidden_dim), nn.Sigmoid(), nn.Dropout(dropout)
        )
        self.attention_c = nn.Linear(hidden_dim, 1)

    def forward(self, h: Tensor) -> Tensor:
        """Unnormalized scores ``[N]`` for instances ``h`` ``[N, dim]``."""
        return self.attention_c(self.attention_a(h) * self.attention_b(h)).squeeze(-1)


def valid_mask(mask: Tensor | None, n: int, device: torch.device) -> Tensor | None:
    """Check ``mask`` (True = valid region) and return it as bool, or None for "all valid"."""
    if mask is None:
        return None
    if mask.shape != (n,):
        raise ValueError(f"mask must have shape [{n}], got {list(mask.shape)}")
    mask = mask.to(device=device, dtype=torch.bool)
    if not bool(mask.any()):
        raise ValueError("mask marks no valid region")
    return mask


def masked_attention_pool(scores: Tensor, h: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Softmax ``scores`` ``[N]`` over valid instances and pool ``h`` ``[N, D]`` -> ``[1, D]``."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
        # zero padded rows so that 0 * (anything, even non-finite) cannot leak into the sum
        h = h.masked_fill(~mask[:, None], 0.0)
    weights = torch.softmax(scores, dim=0)
    return weights, weights[None, :] @ h
