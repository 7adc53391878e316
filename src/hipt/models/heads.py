"""Slide-level heads over one bag of regions: HIPT_LGP, gated-attention MIL and mean pooling."""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from hipt.models.factory import MODELS, build
from hipt.models.grid import bag_to_grid
from hipt.models.scaler import FeatureScaler

__all__ = ["ABMIL", "GatedAttention", "HiptLGP", "MeanPool", "SlideOutput"]


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


def _valid_mask(mask: Tensor | None, n: int, device: torch.device) -> Tensor | None:
    """Check ``mask`` (True = valid region) and return it as bool, or None for "all valid"."""
    if mask is None:
        return None
    if mask.shape != (n,):
        raise ValueError(f"mask must have shape [{n}], got {list(mask.shape)}")
    mask = mask.to(device=device, dtype=torch.bool)
    if not bool(mask.any()):
        raise ValueError("mask marks no valid region")
    return mask


def _masked_attention_pool(scores: Tensor, h: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Softmax ``scores`` ``[N]`` over valid instances and pool ``h`` ``[N, D]`` -> ``[1, D]``."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
        # zero padded rows so that 0 * (anything, even non-finite) cannot leak into the sum
        h = h.masked_fill(~mask[:, None], 0.0)
    weights = torch.softmax(scores, dim=0)
    return weights, weights[None, :] @ h


class HiptLGP(nn.Module):
    """HIPT_LGP_FC: optional ViT-4K per region, then a global transformer and attention pooling.

    Follows reference/hipt.md 6.1 with the official parameter names: ``local_vit``,
    ``global_phi``, ``global_transformer`` (2 post-norm layers, ``[M, 1, E]`` sequence-first as
    the official call), ``global_attn_pool.attention_{a,b,c}``, ``global_rho``, ``classifier``.

    Args:
        local_vit: region encoder (``Vit4K``) applied to ``[M, 256, D_in]`` bags; None for a
            model on pre-extracted ``[M, E]`` region features only.
        embed_dim: region feature width E (192; must equal ``local_vit.embed_dim``).
        n_classes: classifier width.
        n_outputs: alias that overrides ``n_classes`` (e.g. 4 hazard bins for survival).
        freeze_4k: freeze ``local_vit`` (no grads, kept in eval mode, run under no_grad).
        n_heads: heads of the global transformer (3).
        n_layers: layers of the global transformer (2).
        dropout: dropout of phi, transformer, attention gates and rho (0.25).
        standardize: add a :class:`FeatureScaler` (``scaler``) on the region embeddings, between
            the ViT-4K and ``global_phi``; fit it with :meth:`scaler_inputs` of training bags.
            Off in the official model (its state dict then has the official keys only).
    """

    def __init__(
        self,
        local_vit: nn.Module | None = None,
        *,
        embed_dim: int = 192,
        n_classes: int = 2,
        n_outputs: int | None = None,
        freeze_4k: bool = False,
        n_heads: int = 3,
        n_layers: int = 2,
        dropout: float = 0.25,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        if local_vit is not None and getattr(local_vit, "embed_dim", embed_dim) != embed_dim:
            raise ValueError(f"local_vit width {local_vit.embed_dim} != embed_dim {embed_dim}")
        self.embed_dim = embed_dim
        self.n_outputs = n_outputs if n_outputs is not None else n_classes
        self.freeze_4k = freeze_4k and local_vit is not None
        self.local_vit = local_vit
        self.scaler = FeatureScaler(embed_dim) if standardize else None
        self.global_phi = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Dropout(dropout)
        )
        layer = nn.TransformerEncoderLayer(
            d_model=embed_dim,
            nhead=n_heads,
            dim_feedforward=embed_dim,
            dropout=dropout,
            activation="relu",
        )
        # Sequence-first like the official model; the nested-tensor path needs batch_first.
        self.global_transformer = nn.TransformerEncoder(
            layer, num_layers=n_layers, enable_nested_tensor=False
        )
        self.global_attn_pool = GatedAttention(embed_dim, embed_dim, dropout)
        self.global_rho = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Dropout(dropout)
        )
        self.classifier = nn.Linear(embed_dim, self.n_outputs)
        if self.freeze_4k and local_vit is not None:
            local_vit.requires_grad_(False)
            local_vit.eval()

    def train(self, mode: bool = True) -> HiptLGP:
        """Set training mode; a frozen ``local_vit`` always stays in eval mode."""
        super().train(mode)
        if self.freeze_4k and self.local_vit is not None:
            self.local_vit.eval()
        return self

    def region_features(self, x: Tensor) -> Tensor:
        """Region embeddings ``[M, E]``.

        Args:
            x: ``[M, N, D_in]`` patch-feature bag (needs ``local_vit``) or ``[M, E]`` features.
        """
        if x.ndim == 2:
            if x.shape[1] != self.embed_dim:
                raise ValueError(
                    f"region features must be [M, {self.embed_dim}], got {list(x.shape)}"
                )
            return x
        if x.ndim != 3:
            raise ValueError(f"expected [M, N, D] or [M, E] for one slide, got {list(x.shape)}")
        if self.local_vit is None:
            raise ValueError("this HiptLGP has no local_vit; pass [M, E] region features")
        grad = contextlib.nullcontext() if not self.freeze_4k else torch.no_grad()
        with grad:
            return self.local_vit(bag_to_grid(x))

    def scaler_inputs(self, x: Tensor) -> Tensor:
        """What ``scaler`` standardises for bag ``x``: its region embeddings ``[M, E]``."""
        return self.region_features(x)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> SlideOutput:
        """Slide logits and region attention for one bag.

        Args:
            x: ``[M, 256, D_in]`` region bag or ``[M, E]`` region features (one slide).
            mask: ``[M]`` bool, True for real regions; padded regions influence nothing.

        Returns:
            :class:`SlideOutput` with logits ``[1, C]`` and attention ``[M]``.
        """
        valid = _valid_mask(mask, x.shape[0], x.device)
        if valid is not None:
            # zero padded rows first, so even non-finite padding cannot reach the valid ones
            x = x.masked_fill(~valid.view(-1, *([1] * (x.ndim - 1))), 0.0)
        regions = self.region_features(x)
        if self.scaler is not None:
            regions = self.scaler(regions)
        h = self.global_phi(regions)
        padding = None if valid is None else ~valid[None, :]  # [batch=1, M], True = ignore
        h = self.global_transformer(h.unsqueeze(1), src_key_padding_mask=padding).squeeze(1)
        weights, pooled = _masked_attention_pool(self.global_attn_pool(h), h, valid)
        return SlideOutput(self.classifier(self.global_rho(pooled)), weights)


def _instances(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None, int]:
    """Flatten ``[M, K, D]`` region bags to ``[M*K, D]`` instances (mask ``[M]`` or ``[M, K]``)."""
    if x.ndim == 2:
        return x, _valid_mask(mask, x.shape[0], x.device), 1
    if x.ndim != 3:
        raise ValueError(f"expected [N, D] or [M, K, D] for one slide, got {list(x.shape)}")
    m, k, _ = x.shape
    if mask is not None and mask.shape == (m,):
        mask = mask[:, None].expand(m, k)
    flat_mask = None if mask is None else mask.reshape(-1)
    return x.reshape(m * k, -1), _valid_mask(flat_mask, m * k, x.device), k


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
        weights, pooled = _masked_attention_pool(scores, h, valid)
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


@MODELS.register("hipt_lgp")
def hipt_lgp(
    *, vit4k: str | None = "vit4k_xs", checkpoint_4k: str | None = None, **overrides: Any
) -> HiptLGP:
    """Official HIPT_LGP_FC: ViT-4K (``vit4k=None`` for ``[M, 192]`` inputs) + global stage.

    Args:
        vit4k: registry key of the region encoder, or None.
        checkpoint_4k: strict init of the region encoder (official DINO file or our export).
        **overrides: :class:`HiptLGP` arguments (``n_classes``, ``freeze_4k``, ``dropout``...).
    """
    local = None if vit4k is None else build(vit4k, checkpoint=checkpoint_4k)
    if local is None and checkpoint_4k is not None:
        raise ValueError("checkpoint_4k needs a vit4k region encoder")
    return HiptLGP(local, **{"embed_dim": 192, **overrides})


@MODELS.register("hipt_lgp_tiny_test")
def hipt_lgp_tiny_test(
    *, vit4k: str | None = "vit4k_tiny_test", checkpoint_4k: str | None = None, **overrides: Any
) -> HiptLGP:
    """Tiny HIPT_LGP on ``vit4k_tiny_test`` (16-d regions, 2 global heads)."""
    local = None if vit4k is None else build(vit4k, checkpoint=checkpoint_4k)
    if local is None and checkpoint_4k is not None:
        raise ValueError("checkpoint_4k needs a vit4k region encoder")
    return HiptLGP(local, **{"embed_dim": 16, "n_heads": 2, **overrides})


@MODELS.register("abmil")
def abmil(**overrides: Any) -> ABMIL:
    """Gated-attention MIL on 384-d ViT-256 patch features (``input_dim=192`` for regions)."""
    return ABMIL(**overrides)


@MODELS.register("abmil_tiny_test")
def abmil_tiny_test(**overrides: Any) -> ABMIL:
    """Tiny ABMIL on ``vit256_tiny_test`` features (32-d)."""
    return ABMIL(**{"input_dim": 32, "hidden_dim": 16, "attn_dim": 8, **overrides})


@MODELS.register("meanpool")
def meanpool(**overrides: Any) -> MeanPool:
    """Mean-pooling baseline on 384-d ViT-256 patch features."""
    return MeanPool(**overrides)


@MODELS.register("meanpool_tiny_test")
def meanpool_tiny_test(**overrides: Any) -> MeanPool:
    """Tiny mean-pooling baseline on ``vit256_tiny_test`` features (32-d)."""
    return MeanPool(**{"input_dim": 32, "hidden_dim": 16, **overrides})
