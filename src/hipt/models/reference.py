"""Plain explicit-attention ViTs computed the 2021 DINO way: test reference, benchmark baseline."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ExplicitVit4K", "ExplicitVit256"]


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, n, c = x.shape
        qkv = (
            self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out), attn


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, attn = self.attn(self.norm1(x))
        x = x + y
        return x + self.mlp(self.norm2(x)), attn


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class ExplicitVit256(nn.Module):
    """ViT with explicit ``softmax(q k^T) v`` attention, pos-embed resampled on every call.

    Same state-dict keys as :class:`hipt.models.vit256.Vit256` (and the official checkpoint),
    so the two can share weights. Not used on the production path.

    Args:
        patch_size: pixel side of a token.
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / embed_dim.
        pos_grid: side of the learned pos_embed grid.
    """

    def __init__(
        self,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        pos_grid: int = 14,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_embed = _PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, pos_grid * pos_grid + 1, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def interpolate_pos_encoding(self, rows: int, cols: int) -> Tensor:
        """The DINO resampling, recomputed each call: ``[1, 1 + rows * cols, D]``."""
        n = self.pos_embed.shape[1] - 1
        if rows * cols == n and rows == cols:
            return self.pos_embed
        side = math.sqrt(n)
        patch = self.pos_embed[:, 1:].reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
        patch = F.interpolate(
            patch, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic"
        )
        patch = patch.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat((self.pos_embed[:, :1], patch), dim=1)

    def embed(self, x: Tensor) -> tuple[Tensor, int, int]:
        """Patch tokens ``[B, rows * cols, D]`` of images ``[B, 3, H, W]``, and rows, cols."""
        grid = self.patch_embed(x)
        return grid.flatten(2).transpose(1, 2), grid.shape[-2], grid.shape[-1]

    def _tokens(self, x: Tensor) -> Tensor:
        tokens, rows, cols = self.embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        return tokens + self.interpolate_pos_encoding(rows, cols)

    def forward(self, x: Tensor) -> Tensor:
        """CLS features ``[B, D]``."""
        tokens = self._tokens(x)
        for blk in self.blocks:
            tokens, _ = blk(tokens)
        return self.norm(tokens)[:, 0]

    def get_last_selfattention(self, x: Tensor) -> Tensor:
        """Post-softmax attention of the last block ``[B, heads, N + 1, N + 1]``."""
        tokens = self._tokens(x)
        attn = tokens.new_empty(0)
        for blk in self.blocks:
            tokens, attn = blk(tokens)
        return attn


class ExplicitVit4K(ExplicitVit256):
    """Explicit-attention ViT-4K over ``[B, D_in, H, W]`` grids; keys equal ``Vit4K``'s.

    Args:
        input_dim: width of the grid features.
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / embed_dim.
        pos_grid: side of the learned pos_embed grid.
    """

    def __init__(
        self,
        input_dim: int = 384,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        pos_grid: int = 14,
    ) -> None:
        super().__init__(1, embed_dim, depth, num_heads, mlp_ratio, pos_grid)
        del self.patch_embed
        self.phi = nn.Sequential(nn.Linear(input_dim, embed_dim), nn.GELU())

    def embed(self, x: Tensor) -> tuple[Tensor, int, int]:
        """Projected cell tokens ``[B, H * W, D]`` of a grid ``[B, D_in, H, W]``, and H, W."""
        return self.phi(x.flatten(2).transpose(1, 2)), x.shape[-2], x.shape[-1]
