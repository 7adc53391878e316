"""HIPT_LGP: the HIPT slide model (optional ViT-4K per region, global transformer, pooling)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from hipt.models.factory import register_model
from hipt.models.grid import bag_to_grid
from hipt.models.pooling import GatedAttention, SlideOutput, masked_attention_pool, valid_mask
from hipt.models.scaler import FeatureScaler
from hipt.models.spec import FEATS4K, FEATS256, SLIDE_HEAD, ModelSpec
from hipt.models.vit4k import region_encoder_for

if TYPE_CHECKING:
    from hipt.models.vit4k import Vit4K

__all__ = ["HIPT_LGP_SPEC", "HiptLGP"]

#: HIPT_LGP carries its own ViT-4K over ``feats256`` (or reads ``feats4k`` made by it).
HIPT_LGP_SPEC = ModelSpec(kind=SLIDE_HEAD, inputs=(FEATS256, FEATS4K), region_encoder=True)


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

    def input_width(self, kind: str) -> int:
        """Feature width this head takes from a store's ``kind`` array."""
        if kind == FEATS4K:
            return self.embed_dim
        if self.local_vit is None:
            raise ValueError("this HiptLGP has no local_vit; it reads feats4k only")
        return int(cast("Vit4K", self.local_vit).input_dim)

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
        valid = valid_mask(mask, x.shape[0], x.device)
        if valid is not None:
            # zero padded rows first, so even non-finite padding cannot reach the valid ones
            x = x.masked_fill(~valid.view(-1, *([1] * (x.ndim - 1))), 0.0)
        regions = self.region_features(x)
        if self.scaler is not None:
            regions = self.scaler(regions)
        h = self.global_phi(regions)
        padding = None if valid is None else ~valid[None, :]  # [batch=1, M], True = ignore
        h = self.global_transformer(h.unsqueeze(1), src_key_padding_mask=padding).squeeze(1)
        weights, pooled = masked_attention_pool(self.global_attn_pool(h), h, valid)
        return SlideOutput(self.classifier(self.global_rho(pooled)), weights)


def _hipt_lgp(
    vit4k: str | None, checkpoint_4k: str | None, defaults: dict[str, Any], overrides: Any
) -> HiptLGP:
    grid_dim = overrides.pop("grid_dim", None)
    width = None if grid_dim is None else int(grid_dim)
    local = None if vit4k is None else region_encoder_for(vit4k, checkpoint_4k, width)
    if local is None and checkpoint_4k is not None:
        raise ValueError("checkpoint_4k needs a vit4k region encoder")
    return HiptLGP(local, **{**defaults, **overrides})


@register_model("hipt_lgp", HIPT_LGP_SPEC)
def hipt_lgp(
    *, vit4k: str | None = "vit4k_xs", checkpoint_4k: str | None = None, **overrides: Any
) -> HiptLGP:
    """Official HIPT_LGP_FC: ViT-4K (``vit4k=None`` for ``[M, 192]`` inputs) + global stage.

    Args:
        vit4k: registry key of the region encoder, or None.
        checkpoint_4k: strict init of the region encoder (official DINO file or our export).
        **overrides: :class:`HiptLGP` arguments (``n_classes``, ``freeze_4k``, ``dropout``...)
            and ``grid_dim``: width of the ``feats256`` grids the ViT-4K reads (the patch
            encoder's; default: the region encoder's own, 384).
    """
    return _hipt_lgp(vit4k, checkpoint_4k, {"embed_dim": 192}, overrides)


@register_model("hipt_lgp_tiny_test", HIPT_LGP_SPEC)
def hipt_lgp_tiny_test(
    *, vit4k: str | None = "vit4k_tiny_test", checkpoint_4k: str | None = None, **overrides: Any
) -> HiptLGP:
    """Tiny HIPT_LGP on ``vit4k_tiny_test`` (16-d regions, 2 global heads)."""
    return _hipt_lgp(vit4k, checkpoint_4k, {"embed_dim": 16, "n_heads": 2}, overrides)
