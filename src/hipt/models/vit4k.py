"""ViT-4K: HIPT's region transformer over a grid of ViT-256 CLS features, built from timm Blocks."""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import LayerNorm
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from hipt.models.factory import register_model
from hipt.models.pos_embed import PosEmbedCache
from hipt.models.spec import FEATS256, REGION_ENCODER, ModelSpec

__all__ = ["VIT4K_SPEC", "Vit4K", "vit4k_tiny_test", "vit4k_xs"]

#: Region encoders read a store's ``feats256`` grids.
VIT4K_SPEC = ModelSpec(kind=REGION_ENCODER, inputs=(FEATS256,))


class Vit4K(nn.Module):
    """ViT over a ``[B, D_in, H, W]`` grid of patch features (HIPT ``vit4k_xs``).

    Tokens are the grid cells in row-major order, projected by ``phi`` (Linear-GELU-Dropout)
    *before* the CLS token is prepended; the learned ``pos_embed`` covers a 14x14 grid + CLS
    (reference/hipt.md 3.1) and is DINO-interpolated for other grids (16x16 regions, 6x6 local
    crops). State-dict keys equal the official module's: ``cls_token``, ``pos_embed``,
    ``phi.0.*``, ``blocks.N.*``, ``norm.*``.

    Args:
        input_dim: width of the input features (384 = ViT-256 CLS).
        embed_dim: token width (192).
        depth: number of blocks (6).
        num_heads: attention heads (6, head dim 32).
        mlp_ratio: MLP hidden width / embed_dim.
        pos_grid: side of the learned pos_embed grid (14).
        drop_rate: dropout in phi, after pos-embed and in the blocks' projections.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
    """

    def __init__(
        self,
        *,
        input_dim: int = 384,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        pos_grid: int = 14,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.embed_dim = self.num_features = embed_dim
        self.num_heads = num_heads
        self.pos_grid = pos_grid
        self.num_prefix_tokens = 1
        self.phi = nn.Sequential(nn.Linear(input_dim, embed_dim), nn.GELU(), nn.Dropout(drop_rate))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_grid * pos_grid + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        # on the CPU even when built under a device context (e.g. "meta"): these are floats
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.Sequential(
            *[
                Block(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=True,
                    proj_drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rate,
                    act_layer=nn.GELU,
                    norm_layer=LayerNorm,  # timm's LayerNorm defaults to eps=1e-6, as DINO
                )
                for rate in rates
            ]
        )
        self.norm = LayerNorm(embed_dim, eps=1e-6)
        self._pos_cache = PosEmbedCache(num_prefix_tokens=1)
        self._init_weights()

    def _init_weights(self) -> None:
        # DINO init: truncated normal (std 0.02) for tokens and Linear weights, zero biases.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Token features after the final LayerNorm.

        Args:
            x: feature grid ``[B, input_dim, H, W]`` (``bag_to_grid`` of ``[B, H*W, input_dim]``).

        Returns:
            ``[B, 1 + H * W, embed_dim]`` (CLS first).
        """
        if x.ndim != 4 or x.shape[1] != self.input_dim:
            raise ValueError(
                f"Vit4K expects a [B, {self.input_dim}, H, W] grid, got {list(x.shape)}; "
                "use hipt.models.bag_to_grid on [B, H*W, D] bags"
            )
        b, _, h, w = x.shape
        tokens = self.phi(x.flatten(2).transpose(1, 2))  # [B, H*W, E], row-major cells
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)
        tokens = self.pos_drop(tokens + self._pos_cache(self.pos_embed, (h, w)))
        return self.norm(self.blocks(tokens))

    def forward_head(self, x: Tensor) -> Tensor:
        """CLS token ``[B, embed_dim]`` of ``forward_features`` output ``[B, N + 1, embed_dim]``."""
        return x[:, 0]

    def forward(self, x: Tensor) -> Tensor:
        """Region embedding.

        Args:
            x: ``[B, input_dim, H, W]`` (H = W = 16 for a 4096-px region).

        Returns:
            CLS features ``[B, embed_dim]``.
        """
        return self.forward_head(self.forward_features(x))


@register_model("vit4k_xs", VIT4K_SPEC)
def vit4k_xs(**overrides: Any) -> Vit4K:
    """Official ViT_4096-256: 384 -> 192, 6 blocks, 6 heads, 2,781,504 parameters."""
    return Vit4K(**{"input_dim": 384, "embed_dim": 192, "depth": 6, "num_heads": 6, **overrides})


@register_model("vit4k_tiny_test", VIT4K_SPEC)
def vit4k_tiny_test(**overrides: Any) -> Vit4K:
    """Tiny ViT-4K on ``vit256_tiny_test`` features: 32 -> 16, 2 blocks, 2 heads."""
    return Vit4K(**{"input_dim": 32, "embed_dim": 16, "depth": 2, "num_heads": 2, **overrides})


def region_encoder_for(name: str, checkpoint: str | None, input_dim: int | None) -> nn.Module:
    """A registered region encoder built for ``input_dim``-d patch features (the store's D).

    ``input_dim=None`` keeps the architecture's own width.

    Raises:
        CheckpointError: the checkpoint was trained on grids of another width (one line
            naming both widths and the fix), or does not fit otherwise.
    """
    from hipt.models.checkpoints import CheckpointError
    from hipt.models.factory import build

    width: dict[str, Any] = {} if input_dim is None else {"input_dim": input_dim}
    try:
        return build(name, checkpoint=checkpoint, **width)
    except CheckpointError as err:
        if input_dim is None or "phi.0.weight" not in str(err):
            raise
        raise CheckpointError(
            f"{checkpoint}: this {name} was trained on grids of another width than the "
            f"{input_dim}-d features of the patch encoder; pretrain a ViT-4K on these stores "
            "(make pretrain-4k) or extract with the patch encoder it was trained on"
        ) from None
