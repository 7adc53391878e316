"""Model passes for the maps: ViT-256 on a region's pixels, ViT-4K on stored grids, slide head."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import Tensor, nn

from hipt.errors import HiptError
from hipt.models import (
    attention_maps,
    autocast_context,
    bag_to_grid,
    explicit_attention,
    prepare_images,
)
from hipt.models.patch_vit import token_size
from hipt.models.preprocess import PatchPreprocess
from hipt.models.vit256 import VIT256_PREPROCESSING
from hipt.slides.pixels import split_patches

if TYPE_CHECKING:
    from timm.models.vision_transformer import Block


def shift_region(region: np.ndarray, offset_px: int) -> np.ndarray:
    """The region cropped by ``offset_px`` at the top-left and padded white (official shifts)."""
    if offset_px <= 0:
        return region
    out = np.full_like(region, 255)
    out[:-offset_px, :-offset_px] = region[offset_px:, offset_px:]
    return out


class Vit256Pass:
    """ViT-256 over the 256 patches of a region: CLS features and CLS-row attention at once.

    A forward hook keeps the last block's normed input while the model runs to the end (fused
    attention untouched); the attention is then recomputed from it exactly as
    :func:`hipt.models.attention_maps` does, so one pass gives both outputs.

    Args:
        model: a ViT patch encoder in eval mode, on ``device``.
        device: where it runs.
        batch_size: patches per forward.
        preprocess: uint8 patches -> the encoder's input (the store's: stain, resize,
            normalization); default: HIPT's normalization at the patch's own size.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        batch_size: int = 64,
        preprocess: PatchPreprocess | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.preprocess = preprocess or PatchPreprocess(VIT256_PREPROCESSING)
        base = getattr(model, "_orig_mod", model)
        blocks = getattr(base, "blocks", None)
        if not isinstance(blocks, nn.Sequential | nn.ModuleList) or not hasattr(blocks[-1], "attn"):
            raise HiptError(
                f"{getattr(base, 'hipt_architecture', type(base).__name__)} is not a ViT: the "
                "token-level maps need a ViT patch encoder (use maps of the 4K and slide levels)"
            )
        self.last = cast("Block", blocks[-1])
        self.token_size = token_size(base)
        self.num_prefix = int(getattr(base, "num_prefix_tokens", 1))

    def tokens_per_patch(self, patch_px: int) -> int:
        """Tokens per patch side: 16 for 256-px patches of 16-px tokens or 224-px inputs of 14."""
        side = self.preprocess.pre.input_px if self.preprocess.resizes(patch_px) else patch_px
        if side % self.token_size:
            raise ValueError(f"input side {side} is not a multiple of the token size")
        return side // self.token_size

    @torch.inference_mode()
    def __call__(self, region: np.ndarray, patch_px: int) -> tuple[np.ndarray, np.ndarray]:
        """Encode one region.

        Args:
            region: uint8 ``[16P, 16P, 3]`` at the store's resolution.
            patch_px: patch side ``P``.

        Returns:
            ``(features [256, D], cls_attention [256, heads, t, t])`` float32, row-major patches.
        """
        t = self.tokens_per_patch(patch_px)
        patches = split_patches(region, patch_px)
        feats, maps = [], []
        captured: list[Tensor] = []
        handle = self.last.norm1.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            for start in range(0, len(patches), self.batch_size):
                chunk = torch.from_numpy(patches[start : start + self.batch_size])
                chunk = chunk.permute(0, 3, 1, 2).to(self.device)
                x = prepare_images(self.preprocess(chunk), self.device)
                captured.clear()
                with autocast_context(self.device):
                    out = self.model(x)
                    attn = explicit_attention(self.last.attn, captured[0])
                cls = attn[:, :, 0, self.num_prefix :].float()
                maps.append(cls.reshape(cls.shape[0], cls.shape[1], t, t).cpu().numpy())
                feats.append(out.float().cpu().numpy())
        finally:
            handle.remove()
        return np.concatenate(feats), np.concatenate(maps)


@torch.inference_mode()
def vit4k_cls_attention(vit4k: nn.Module, feats256: np.ndarray, device: torch.device) -> np.ndarray:
    """ViT-4K CLS-row attention over each region's patch grid.

    Args:
        vit4k: ``Vit4K`` in eval mode on ``device``.
        feats256: ``[n, 256, D]`` ViT-256 features (row-major patches).
        device: where it runs.

    Returns:
        ``[n, heads, 16, 16]`` float32.
    """
    grid = bag_to_grid(torch.from_numpy(np.ascontiguousarray(feats256, np.float32)).to(device))
    with autocast_context(device):
        attn = attention_maps(vit4k, grid)
    cls = attn[:, :, 0, 1:].float()
    side = grid.shape[-1]
    return cls.reshape(cls.shape[0], cls.shape[1], side, side).cpu().numpy()


@torch.inference_mode()
def slide_forward(
    model: nn.Module, bag: np.ndarray, device: torch.device
) -> tuple[np.ndarray, torch.Tensor]:
    """Region attention ``[M]`` and logits ``[1, C]`` (CPU) of a slide head for one bag."""
    x = torch.from_numpy(np.ascontiguousarray(bag, np.float32)).to(device)
    with autocast_context(device):
        out = model(x)
    return out.attention.float().cpu().numpy(), out.logits.float().cpu()


def slide_attention(model: nn.Module, bag: np.ndarray, device: torch.device) -> np.ndarray:
    """Region attention ``[M]`` of a slide head (``SlideOutput.attention``) for one bag."""
    return slide_forward(model, bag, device)[0]
