"""DINO projection head (lightly) and the multi-crop wrapper that runs a backbone per crop size."""

from __future__ import annotations

import warnings

import torch
from lightly.models.modules import DINOProjectionHead
from torch import Tensor, nn


def build_head(
    input_dim: int,
    out_dim: int = 65536,
    hidden_dim: int = 2048,
    bottleneck_dim: int = 256,
    norm_last_layer: bool = True,
    batch_norm: bool = False,
) -> DINOProjectionHead:
    """Lightly's ``DINOProjectionHead``: 3-layer MLP, l2-norm, weight-normed last layer.

    Last-layer freezing is scheduled in optimizer steps by ``DinoModule`` (see
    :mod:`hipt.pretrain.schedules`), so lightly's epoch-based ``freeze_last_layer`` is unused.

    Args:
        input_dim: backbone output width (384 for ViT-256, 192 for ViT-4K).
        out_dim: prototypes K.
        hidden_dim: MLP width.
        bottleneck_dim: width before the last layer.
        norm_last_layer: keep the weight-norm gain frozen at 1.
        batch_norm: BatchNorm in the MLP.
    """
    with warnings.catch_warnings():
        # lightly builds the last layer with the deprecated nn.utils.weight_norm; its
        # weight_g/weight_v names are also those of the official DINO checkpoints.
        warnings.filterwarnings(
            "ignore", message=".*weight_norm.*deprecated", category=FutureWarning
        )
        return DINOProjectionHead(
            input_dim=input_dim,
            hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim,
            output_dim=out_dim,
            batch_norm=batch_norm,
            norm_last_layer=norm_last_layer,
        )


def _shape_groups(views: list[Tensor]) -> list[tuple[int, int]]:
    """``[start, end)`` runs of consecutive views with equal shape."""
    groups: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(views) + 1):
        if i == len(views) or views[i].shape != views[start].shape:
            groups.append((start, i))
            start = i
    return groups


class MultiCropWrapper(nn.Module):
    """Backbone + head over a list of views, one backbone pass per run of equal-size views.

    Views of one size (2 global, then the locals) are concatenated along the batch, so a
    multi-crop step costs two backbone calls, and the head runs once on all features, as
    DINO's ``MultiCropWrapper`` does [0]. Works for images ``[B, 3, H, W]`` and feature grids
    ``[B, D, h, w]`` alike.

    - [0]: DINO, 2021, https://arxiv.org/abs/2104.14294

    Args:
        backbone: maps ``[B, C, H, W]`` to ``[B, E]``.
        head: maps ``[N, E]`` to ``[N, K]``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, views: list[Tensor]) -> list[Tensor]:
        """Head outputs per view.

        Args:
            views: ``V`` tensors ``[B, C, H_v, W_v]`` with the same ``B``.

        Returns:
            ``V`` tensors ``[B, K]`` in the order of ``views``.
        """
        feats = [self.backbone(_cat(views[a:b])) for a, b in _shape_groups(views)]
        logits = self.head(_cat(feats))
        return list(logits.chunk(len(views)))


def _cat(tensors: list[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
