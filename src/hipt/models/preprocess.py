"""uint8 patches -> a patch encoder's input: optional stain normalization, resize, normalize.

One module for every stage that feeds pixels to a patch encoder (extraction, heatmaps), so the
features of a store and the ones recomputed for its maps come from identical inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hipt.models.spec import Preprocessing
from hipt.models.transforms import normalize_patches

__all__ = ["RESIZE_256", "PatchPreprocess", "norm_text"]

#: How a patch is resized to an encoder's input side (torchvision ``Resize``'s default on
#: tensors with antialiasing, as the peers' ``Resize(224)`` on PIL images).
RESIZE_256 = "bilinear-antialias"

StainFn = Callable[[Tensor], Tensor]


class PatchPreprocess(nn.Module):
    """``uint8 [B, 3, P, P]`` -> normalized ``float32 [B, 3, S, S]`` for a patch encoder.

    Args:
        pre: the encoder's declared preprocessing (input side ``S``, mean, std).
        stain: optional stain normalizer, ``uint8 [B, 3, P, P] -> uint8 [B, 3, P, P]`` on the
            patches' device (applied first, at the patch's own resolution).
    """

    def __init__(self, pre: Preprocessing, stain: StainFn | None = None) -> None:
        super().__init__()
        self.pre = pre
        self.stain = stain

    def forward(self, patches: Tensor) -> Tensor:
        """Preprocess a channels-first uint8 batch on its device."""
        if self.stain is not None:
            patches = self.stain(patches)
        side = self.pre.input_px
        if not self.resizes(patches.shape[-1]) and patches.shape[-2] == patches.shape[-1]:
            # bit-identical to ToTensor + Normalize (the official preprocessing)
            return normalize_patches(patches, mean=self.pre.mean, std=self.pre.std, layout="chw")
        x = F.interpolate(
            patches.float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False
        )
        mean = torch.tensor(self.pre.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.pre.std, device=x.device).view(1, 3, 1, 1)
        return x.div_(255).sub_(mean).div_(std)

    def resizes(self, patch_px: int) -> bool:
        """Whether ``patch_px`` patches are resized to the encoder's input side."""
        return self.pre.resize and patch_px != self.pre.input_px


def norm_text(pre: Preprocessing, patch_px: int) -> str:
    """What a store records about its patch inputs (a change makes the store stale).

    E.g. ``mean=0.485,0.456,0.406 std=0.229,0.224,0.225 resize=bilinear-antialias``.
    """
    resize = RESIZE_256 if pre.resize and patch_px != pre.input_px else "none"
    mean = ",".join(f"{v:g}" for v in pre.mean)
    std = ",".join(f"{v:g}" for v in pre.std)
    return f"mean={mean} std={std} resize={resize}"
