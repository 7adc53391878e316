"""Patch encoders of any published ViT recipe, as timm ``VisionTransformer`` s.

Parameter names are timm's, which is the layout UNI, Virchow, H-optimus, Prov-GigaPath, Lunit
and kaiko publish their weights in, so a downloaded state dict loads strictly.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

__all__ = ["EMBEDDINGS", "PatchViT", "feature_width", "token_size"]

#: Which tokens form a patch's embedding: the final-normed CLS token, or (Virchow) the CLS
#: token concatenated with the mean of the patch tokens (register tokens excluded): 2 x width.
EMBEDDINGS = ("cls", "cls+mean")


class PatchViT(VisionTransformer):
    """A timm ViT that returns one embedding per image.

    Args:
        embedding: ``cls`` or ``cls+mean`` (:data:`EMBEDDINGS`).
        **vit_kwargs: timm ``VisionTransformer`` arguments (``img_size``, ``patch_size``,
            ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``mlp_layer``, ``act_layer``,
            ``init_values``, ``reg_tokens``, ``no_embed_class``, ...); the classifier is always
            removed (``num_classes=0``) and the CLS token is the pooled output.
    """

    def __init__(self, *, embedding: str = "cls", **vit_kwargs: Any) -> None:
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got '{embedding}'")
        super().__init__(num_classes=0, global_pool="token", **vit_kwargs)
        self.embedding = embedding
        patch = self.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, tuple) else patch)
        self.feature_dim = self.embed_dim * (2 if embedding == "cls+mean" else 1)

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        """Normalized images ``[B, 3, px, px]`` -> embeddings ``[B, feature_dim]``."""
        tokens = self.forward_features(x, attn_mask=attn_mask, is_causal=is_causal)
        cls = self.forward_head(tokens)
        if self.embedding == "cls":
            return cls
        return torch.cat([cls, tokens[:, self.num_prefix_tokens :].mean(dim=1)], dim=-1)


def feature_width(model: nn.Module) -> int:
    """Width of a patch encoder's embedding (``feature_dim``, else timm ``num_features``)."""
    base = getattr(model, "_orig_mod", model)
    for attr in ("feature_dim", "num_features", "embed_dim"):
        value = getattr(base, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"cannot tell the embedding width of {type(base).__name__}")


def token_size(model: nn.Module) -> int:
    """Pixel side of a ViT token at the encoder's input (``patch_embed.patch_size``)."""
    base = getattr(model, "_orig_mod", model)
    own = getattr(base, "patch_size", None)
    if isinstance(own, int):
        return own
    embed = getattr(base, "patch_embed", None)
    size = getattr(embed, "patch_size", None)
    if isinstance(size, tuple | list):
        return int(size[0])
    if isinstance(size, int):
        return size
    raise ValueError(f"{type(base).__name__} is not a ViT (no patch_embed.patch_size)")
