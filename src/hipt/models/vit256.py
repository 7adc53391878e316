"""ViT-256: the DINO ViT-S/16 patch encoder of HIPT as a timm VisionTransformer at 256 px."""

from __future__ import annotations

from functools import partial
from typing import Any, cast

import torch
from timm.layers import LayerNorm
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from hipt.models.factory import register_model
from hipt.models.pos_embed import PosEmbedCache
from hipt.models.spec import PATCH_ENCODER, PIXELS, ModelSpec, Preprocessing
from hipt.models.transforms import HIPT_MEAN, HIPT_STD, PatchNormalize

__all__ = ["VIT256_SPEC", "Vit256", "vit256_small", "vit256_tiny_test", "vit256_transform"]

#: HIPT's patch encoders: 256-px patches, normalized with mean = std = 0.5 (reference/hipt.md 3.4).
VIT256_PREPROCESSING = Preprocessing(input_px=256, mean=HIPT_MEAN, std=HIPT_STD, resize=False)
VIT256_SPEC = ModelSpec(kind=PATCH_ENCODER, inputs=(PIXELS,), preprocessing=VIT256_PREPROCESSING)


class Vit256(VisionTransformer):
    """DINO ViT over 256x256 patches that returns the normed CLS token.

    Built as timm ``VisionTransformer`` with ``img_size = pos_grid * patch_size`` (224 for the
    official weights) so the 197-token ``pos_embed`` of the DINO checkpoint loads strictly; any
    other input size gets DINO's bicubic pos-embed interpolation (reference/hipt.md 2.2), cached
    per grid at inference. Parameter names equal the official module's, and the fused SDPA
    attention stays on (see :func:`hipt.models.attention_maps` for maps).

    Args:
        patch_size: pixel side of a token.
        embed_dim: token width (384 for ViT-S).
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / embed_dim.
        pos_grid: side of the learned pos_embed grid (14 for the DINO checkpoints).
        drop_rate: dropout after pos-embed and in the blocks' projections (DINO ``drop_rate``).
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, linearly increasing over blocks (0.1 for DINO students).
    """

    def __init__(
        self,
        *,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        pos_grid: int = 14,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(
            img_size=pos_grid * patch_size,
            patch_size=patch_size,
            in_chans=3,
            num_classes=0,
            global_pool="token",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            dynamic_img_size=True,  # patch_embed keeps the [B, H, W, D] grid for _pos_embed
            pos_drop_rate=drop_rate,
            proj_drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            norm_layer=partial(LayerNorm, eps=1e-6),
            act_layer=nn.GELU,
        )
        if self.cls_token is None or self.pos_embed is None:
            raise RuntimeError("timm built the ViT without a class token or pos_embed")
        # DINO initialises the CLS token like pos_embed (timm uses std 1e-6).
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.patch_size = patch_size
        self.pos_grid = pos_grid
        self._pos_cache = PosEmbedCache(num_prefix_tokens=self.num_prefix_tokens)

    def _pos_embed(self, x: Tensor) -> Tensor:
        """Prepend CLS and add the DINO-interpolated pos_embed.

        Args:
            x: patch tokens ``[B, H, W, D]`` (row-major grid, as DINO's flatten).

        Returns:
            ``[B, 1 + H * W, D]``.
        """
        b, h, w, d = x.shape
        cls_token, pos_embed = cast(Tensor, self.cls_token), cast(Tensor, self.pos_embed)
        pos = self._pos_cache(pos_embed, (h, w))
        tokens = torch.cat((cls_token.expand(b, -1, -1), x.reshape(b, h * w, d)), dim=1)
        return self.pos_drop(tokens + pos)

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        """Encode normalized patches.

        Args:
            x: ``[B, 3, 256, 256]`` normalized with mean = std = 0.5 (:func:`vit256_transform`);
                any size divisible by ``patch_size`` works.
            attn_mask: optional token mask passed to timm's blocks (unused by HIPT).
            is_causal: timm's causal-attention switch (unused by HIPT).

        Returns:
            CLS features ``[B, embed_dim]`` after the final LayerNorm.
        """
        return self.forward_head(self.forward_features(x, attn_mask=attn_mask, is_causal=is_causal))


def vit256_transform() -> PatchNormalize:
    """The transform matching :class:`Vit256`: uint8 RGB -> ``(x / 255 - 0.5) / 0.5``, CHW."""
    return PatchNormalize(mean=VIT256_PREPROCESSING.mean, std=VIT256_PREPROCESSING.std)


@register_model("vit256_small", VIT256_SPEC)
def vit256_small(**overrides: Any) -> Vit256:
    """Official ViT_256-16 (DINO ViT-S/16): 384-d, 12 blocks, 6 heads, 21,665,664 parameters."""
    return Vit256(**{"embed_dim": 384, "depth": 12, "num_heads": 6, **overrides})


@register_model("vit256_tiny_test", VIT256_SPEC)
def vit256_tiny_test(**overrides: Any) -> Vit256:
    """Tiny ViT-256 for tests and CPU demos: 32-d, 2 blocks, 2 heads, 197-token pos_embed."""
    return Vit256(**{"embed_dim": 32, "depth": 2, "num_heads": 2, **overrides})
