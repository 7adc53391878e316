"""Instance-level slide heads: gated-attention MIL (CLAM-style ABMIL) and mean pooling."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hipt.models.factory import register_model
from hipt.models.pooling import GatedAttention, SlideOutput, masked_attention_pool, valid_mask
from hipt.models.scaler import FeatureScaler
from hipt.models.spec import FEATS4K, FEATS256, SLIDE_HEAD, ModelSpec

__all__ = ["ABMIL", "INSTANCE_HEAD_SPEC", "MeanPool"]

#: Slide heads read a store's ``feats256`` grids (patch instances) or its ``feats4k`` regions.
INSTANCE_HEAD_SPEC = ModelSpec(kind=SLIDE_HEAD, inputs=(FEATS256, FEATS4K))


def _instances(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None, int]:
    """Flatten ``[M, K, D]`` region bags to ``[M*K, D]`` instances (mask ``[M]`` or ``[M, K]``)."""
    if x.ndim == 2:
        return x, valid_mask(mask, x.shape[0], x.device), 1
    if x.ndim != 3:
        raise ValueError(f"expected [N, D] or [M, K, D] for one slide, got {list(x.shape)}")
    m, k, _ = x.shape
    if mask is not None and mask.shape == (m,):
        mask = mask[:, None].expand(m, k)
    flat_mask = None if mask is None else mask.reshape(-1)
    return x.reshape(m * k, -1), valid_mask(flat_mask, m * k, x.device), k


def _zero_padding(inst: Tensor, valid: Tensor | None) -> Tensor:
    """Zero padded instances so non-finite padding cannot leak through ``0 * x``."""
    return inst if valid is None else inst.masked_fill(~valid[:, None], 0.0)


class _InstancePool(nn.Module):
    """Instance heads: (optional scaler) -> projection -> pooling -> classifier.

    ``[M, K, D]`` region bags are flattened to ``M*K`` patch instances; the returned attention
    is summed per region (``[M]``). Gated-attention pooling when ``attn_dim`` is set, else the
    mean.
    """

    def __init__(
        self,
        *,
        input_dim: int,
        hidden_dim: int,
        attn_dim: int | None,
        n_classes: int,
        n_outputs: int | None,
        dropout: float,
        standardize: bool,
    ) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.n_outputs = n_outputs if n_outputs is not None else n_classes
        self.scaler = FeatureScaler(input_dim) if standardize else None
        self.fc = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attn_pool = GatedAttention(hidden_dim, attn_dim, dropout) if attn_dim else None
        self.classifier = nn.Linear(hidden_dim, self.n_outputs)

    def input_width(self, kind: str) -> int:
        """Feature width this head takes (the same for patch and region instances)."""
        return self.input_dim

    @staticmethod
    def scaler_inputs(x: Tensor) -> Tensor:
        """What ``scaler`` standardises: the ``[N, D]`` instances of bag ``x``."""
        return _instances(x, None)[0]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> SlideOutput:
        """Slide logits ``[1, C]`` and attention ``[M]`` for ``[N, D]`` or ``[M, K, D]``."""
        inst, valid, k = _instances(x, mask)
        if self.scaler is not None:
            inst = self.scaler(inst)
        h = self.fc(_zero_padding(inst, valid))
        if self.attn_pool is not None:
            scores = self.attn_pool(h)
        else:
            scores = torch.zeros(h.shape[0], dtype=h.dtype, device=h.device)
        weights, pooled = masked_attention_pool(scores, h, valid)
        return SlideOutput(self.classifier(pooled), weights.reshape(-1, k).sum(-1))


class ABMIL(_InstancePool):
    """Gated-attention MIL [0] (CLAM-SB without instance clustering) over instances.

    ``[M, K, D]`` region bags are flattened to ``M*K`` patch instances; the returned attention
    is summed per region (``[M]``).

    Args:
        input_dim: instance width D.
        hidden_dim: width after the instance projection.
        attn_dim: gated-attention width.
        n_classes: classifier width.
        n_outputs: alias that overrides ``n_classes``.
        dropout: dropout after the projection and the attention gates.
        standardize: add a :class:`FeatureScaler` (``scaler``) on the instances.
    """

    def __init__(
        self,
        *,
        input_dim: int = 384,
        hidden_dim: int = 512,
        attn_dim: int = 256,
        n_classes: int = 2,
        n_outputs: int | None = None,
        dropout: float = 0.25,
        standardize: bool = False,
    ) -> None:
        super().__init__(
            input_dim=input_dim,
            hidden_dim=hidden_dim,
            attn_dim=attn_dim,
            n_classes=n_classes,
            n_outputs=n_outputs,
            dropout=dropout,
            standardize=standardize,
        )


class MeanPool(_InstancePool):
    """Mean of projected instances -> classifier (a permutation-invariant baseline).

    Args:
        input_dim: instance width D.
        hidden_dim: width after the instance projection.
        n_classes: classifier width.
        n_outputs: alias that overrides ``n_classes``.
        dropout: dropout after the projection.
        standardize: add a :class:`FeatureScaler` (``scaler``) on the instances.
    """

    def __init__(
        self,
        *,
        input_dim: int = 384,
        hidden_dim: int = 512,
        n_classes: int = 2,
        n_outputs: int | None = None,
        dropout: float = 0.25,
        standardize: bool = False,
    ) -> None:
        super().__init__(
            input_dim=input_dim,
            hidden_dim=hidden_dim,
            attn_dim=None,
            n_classes=n_classes,
            n_outputs=n_outputs,
            dropout=dropout,
            standardize=standardize,
        )


@register_model("abmil", INSTANCE_HEAD_SPEC)
def abmil(**overrides: Any) -> ABMIL:
    """Gated-attention MIL on 384-d ViT-256 patch features (``input_dim=192`` for regions)."""
    return ABMIL(**overrides)


@register_model("abmil_tiny_test", INSTANCE_HEAD_SPEC)
def abmil_tiny_test(**overrides: Any) -> ABMIL:
    """Tiny ABMIL on ``vit256_tiny_test`` features (32-d)."""
    return ABMIL(**{"input_dim": 32, "hidden_dim": 16, "attn_dim": 8, **overrides})


@register_model("meanpool", INSTANCE_HEAD_SPEC)
def meanpool(**overrides: Any) -> MeanPool:
    """Mean-pooling baseline on 384-d ViT-256 patch features."""
    return MeanPool(**overrides)


@register_model("meanpool_tiny_test", INSTANCE_HEAD_SPEC)
def meanpool_tiny_test(**overrides: Any) -> MeanPool:
    """Tiny mean-pooling baseline on ``vit256_tiny_test`` features (32-d)."""
    return MeanPool(**{"input_dim": 32, "hidden_dim": 16, **overrides})
