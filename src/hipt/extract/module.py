"""LightningModule for predict: patch batches in, finished regions (ViT-256 + ViT-4K) out."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, cast

import numpy as np
import torch
from lightning.pytorch import LightningModule

from hipt.extract.dataset import PatchBatch
from hipt.extract.encoder import RegionAssembler, RegionEncoder

if TYPE_CHECKING:
    from hipt.models import Vit4K


class EncodedRegions(NamedTuple):
    """What one predict step finished (host memory, float32).

    Attributes:
        slide: ``[n]`` slide positions.
        region: ``[n]`` region indices within the slide.
        feats256: ``[n, 256, D256]`` ViT-256 CLS per patch, row-major.
        feats4k: ``[n, D4k]`` ViT-4K CLS per region.
        failed: (slide position, one-line error) reported by the readers in this batch.
    """

    slide: np.ndarray
    region: np.ndarray
    feats256: np.ndarray
    feats4k: np.ndarray
    failed: list[tuple[int, str]]


class ExtractModule(LightningModule):
    """Wires :class:`RegionEncoder` and :class:`RegionAssembler` into ``predict_step``.

    Args:
        encoder: the frozen encoders.
        skip_background: fill unencoded patches with the blank-patch feature.
        patch_px: patch side (for the blank patch).
    """

    def __init__(self, encoder: RegionEncoder, skip_background: bool, patch_px: int) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.skip_background = skip_background
        self.patch_px = patch_px
        self.assembler = RegionAssembler()

    def on_predict_start(self) -> None:
        """Compute the blank-patch feature once (skip_background) and reset the assembler.

        The blank patch goes through the same precision context as every tissue patch
        (the trainer's: bf16 autocast on CUDA), so filled and encoded patches agree.
        """
        if self.device.type == "cuda":
            self.encoder.vit256.to(memory_format=torch.channels_last)
        fill = None
        if self.skip_background:
            with self.trainer.precision_plugin.forward_context():
                fill = self.encoder.blank_feature(self.patch_px, self.device)
        self.assembler = RegionAssembler(fill)

    def predict_step(self, batch: PatchBatch, batch_idx: int = 0) -> EncodedRegions:
        """Encode a patch batch; return every region it completed, with its ViT-4K feature."""
        for slide, _ in batch.failed:
            self.assembler.drop_slide(slide)
        done: list[tuple[int, int]] = []
        if batch.patches.shape[0]:
            feats = self.encoder.encode_patches(batch.patches)
            done += self.assembler.add(
                batch.slide, batch.region, batch.patch, batch.expected, feats
            )
        vit4k = cast("Vit4K", self.encoder.vit4k)
        if batch.empty.numel():
            like = torch.empty((1, vit4k.input_dim), device=self.device)
            done += self.assembler.add_empty(batch.empty, like)
        fin = self.assembler.pop(done)
        if not done:
            d256 = int(vit4k.input_dim)
            d4k = int(vit4k.embed_dim)
            empty = np.zeros(0, dtype=np.int64)
            return EncodedRegions(
                empty, empty, np.zeros((0, 256, d256), np.float32), np.zeros((0, d4k), np.float32),
                list(batch.failed),
            )  # fmt: skip
        feats4k = self.encoder.encode_regions(fin.bags)
        return EncodedRegions(
            slide=np.asarray(fin.slide, dtype=np.int64),
            region=np.asarray(fin.region, dtype=np.int64),
            feats256=fin.bags.float().cpu().numpy(),
            feats4k=feats4k.float().cpu().numpy(),
            failed=list(batch.failed),
        )
