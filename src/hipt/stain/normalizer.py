"""Optional stain normalization of uint8 RGB patches with torchstain's Macenko or Reinhard."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import io
import logging
import math
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer

from hipt.errors import ConfigError

__all__ = [
    "METHODS",
    "SHIPPED_REFERENCE",
    "StainConfig",
    "StainNormalizer",
    "cost_per_region",
    "load_reference",
    "tissue_fraction",
]

log = logging.getLogger(__name__)

METHODS = ("none", "macenko", "reinhard")
#: The H&E patch shipped with the package (cut by ``scripts/make_stain_reference.py``).
SHIPPED_REFERENCE = "reference_he.png"

#: torchstain's Macenko defaults, fixed here so provenance can state them: transmitted light
#: intensity, the angle percentile of the extreme stain vectors, and the optical-density (OD)
#: threshold below which a pixel counts as background in any channel.
IO = 240
ALPHA = 1.0
BETA = 0.15
#: Largest uint8 value that torchstain's ``OD = -ln((I + 1) / IO) >= BETA`` test counts as
#: tissue (205), computed with its float32 formula so the two tests agree exactly.
TISSUE_MAX_VALUE = int((-torch.log((torch.arange(256.0) + 1) / IO) >= BETA).sum()) - 1
#: Decimals of the fitted reference values in :meth:`StainNormalizer.provenance`.
DECIMALS = 6


@dataclasses.dataclass
class StainConfig:
    """Stain normalization settings; every field changes the features made from the patches.

    Attributes:
        method: ``none`` (off), ``macenko`` [0] or ``reinhard`` [1].
        reference: path of an RGB PNG/JPEG/TIFF to fit the target stain to; ``None`` uses the
            shipped H&E patch ``hipt/stain/reference_he.png``.
        min_tissue_fraction: patches with a smaller fraction of tissue pixels (OD >= 0.15 in all
            channels, torchstain's own test) are passed through unchanged: their stain estimate
            rests on too few pixels, and Reinhard would tint their background.

    [0] Macenko et al., "A method for normalizing histology slides for quantitative analysis",
        ISBI 2009.
    [1] Reinhard et al., "Color transfer between images", IEEE CG&A 2001.
    """

    method: str = "none"
    reference: str | None = None
    min_tissue_fraction: float = 0.1

    def validate(self) -> None:
        """Raise :class:`~hipt.errors.ConfigError` with one line naming the bad value."""
        if self.method not in METHODS:
            raise ConfigError(
                f"stain.method must be one of {', '.join(METHODS)}; got {self.method!r}"
            )
        if not 0.0 <= self.min_tissue_fraction <= 1.0:
            raise ConfigError(
                f"stain.min_tissue_fraction must lie in [0, 1]; got {self.min_tissue_fraction!r}"
            )
        if self.method != "none" and self.reference is not None:
            path = Path(self.reference).expanduser()
            if not path.is_file():
                raise ConfigError(
                    f"stain.reference: no such file {str(path)!r}; give an RGB PNG/JPEG/TIFF "
                    "or null for the shipped H&E reference"
                )


def _decode_rgb(data: bytes, name: str) -> np.ndarray:
    """Image bytes -> uint8 ``[H, W, 3]``; TIFFs that Pillow cannot read go through tifffile."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.array(img.convert("RGB"))  # a writable copy
    except (OSError, ValueError) as exc:
        if not name.lower().endswith((".tif", ".tiff")):
            raise ConfigError(f"stain.reference: cannot read {name!r} as an image: {exc}") from None
    import tifffile  # only for TIFFs Pillow cannot decode (tiled, JPEG2000, ...)

    try:
        arr = np.asarray(tifffile.imread(io.BytesIO(data)))
    except Exception as exc:  # tifffile raises many types; all mean "not a readable TIFF"
        raise ConfigError(f"stain.reference: cannot read {name!r} as a TIFF: {exc}") from None
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ConfigError(
            f"stain.reference: {name!r} must be 8-bit RGB(A); got {arr.dtype} {list(arr.shape)}"
        )
    return arr[..., :3]


def load_reference(reference: str | Path | None) -> tuple[Tensor, str]:
    """Read a reference image.

    Args:
        reference: image path, or ``None`` for the shipped H&E patch.

    Returns:
        uint8 ``[3, H, W]`` CPU tensor and its identity: ``sha256:<hex>`` of the file's bytes, or
        ``shipped:reference_he.png``.
    """
    if reference is None:
        data = resources.files(__package__).joinpath(SHIPPED_REFERENCE).read_bytes()
        name, ident = SHIPPED_REFERENCE, f"shipped:{SHIPPED_REFERENCE}"
    else:
        path = Path(reference).expanduser()
        if not path.is_file():
            raise ConfigError(f"stain.reference: no such file {str(path)!r}")
        data = path.read_bytes()
        name, ident = str(path), f"sha256:{hashlib.sha256(data).hexdigest()}"
    rgb = _decode_rgb(data, name)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous(), ident


def tissue_fraction(patches: Tensor) -> Tensor:
    """Fraction of pixels that torchstain's Macenko counts as tissue (OD >= 0.15 in all channels).

    Args:
        patches: uint8 ``[B, 3, H, W]``.

    Returns:
        float ``[B]`` on the patches' device.
    """
    return (patches <= TISSUE_MAX_VALUE).all(dim=1).float().mean(dim=(1, 2))


def _rounded(t: Tensor) -> list[Any]:
    return [_rounded(row) for row in t] if t.ndim > 1 else [round(float(v), DECIMALS) for v in t]


class StainNormalizer:
    """Normalize uint8 ``[B, 3, H, W]`` patches to a reference stain with torchstain.

    torchstain's torch backend does the math, one image at a time. Patches with less than
    ``min_tissue_fraction`` tissue, or on which torchstain fails (an ill-conditioned eigen problem,
    or NaN output), are returned unchanged and counted in :attr:`n_passthrough`.

    The reference is always fitted on the CPU, so :meth:`provenance` does not depend on the
    device. Macenko then runs on the patches' device. torchstain 1.4.1's Reinhard keeps its colour
    matrices on the CPU, so on other devices Reinhard copies the batch to the CPU and back.

    Args:
        method: ``none``, ``macenko`` or ``reinhard``.
        reference: reference image path; ``None`` uses the shipped H&E patch.
        min_tissue_fraction: see :class:`StainConfig`.
        device: where the fitted reference values are kept first; calls on other devices move
            them there.
    """

    def __init__(
        self,
        method: str = "none",
        reference: str | Path | None = None,
        *,
        min_tissue_fraction: float = 0.1,
        device: torch.device | str | None = None,
    ) -> None:
        cfg = StainConfig(
            method, None if reference is None else str(reference), min_tissue_fraction
        )
        cfg.validate()
        self.method = method
        self.min_tissue_fraction = float(min_tissue_fraction)
        self.n_passthrough = 0
        self.n_normalized = 0
        self._reference_id: str | None = None
        self._fitted: dict[str, Tensor] = {}
        self._macenko: TorchMacenkoNormalizer | None = None
        self._reinhard: TorchReinhardNormalizer | None = None
        self._device = torch.device("cpu")
        if method != "none":
            image, self._reference_id = load_reference(reference)
            self._fit(image, name=str(reference or SHIPPED_REFERENCE))
            self._place(torch.device(device) if device is not None else self._device)

    @classmethod
    def from_config(
        cls, cfg: StainConfig, device: torch.device | str | None = None
    ) -> StainNormalizer:
        """Build from a :class:`StainConfig` (validated first)."""
        cfg.validate()
        return cls(
            cfg.method, cfg.reference, min_tissue_fraction=cfg.min_tissue_fraction, device=device
        )

    @property
    def enabled(self) -> bool:
        """Whether calls change anything (``method != "none"``)."""
        return self.method != "none"

    def _fit(self, image: Tensor, name: str) -> None:
        with torch.no_grad():
            if self.method == "macenko":
                self._macenko = TorchMacenkoNormalizer()
                try:
                    self._macenko.fit(image, Io=IO, alpha=ALPHA, beta=BETA)
                except (torch.linalg.LinAlgError, IndexError) as exc:
                    raise ConfigError(
                        f"stain.reference {name!r}: Macenko fit failed: {exc}"
                    ) from None
                self._fitted = {"he_ref": self._macenko.HERef, "max_c_ref": self._macenko.maxCRef}
                ok = bool((self._macenko.maxCRef > 0).all())
            else:
                self._reinhard = TorchReinhardNormalizer()
                self._reinhard.fit(image)
                self._fitted = {
                    "target_means": self._reinhard.target_means,
                    "target_stds": self._reinhard.target_stds,
                }
                ok = bool((self._reinhard.target_stds > 0).all())
        ok = ok and all(bool(torch.isfinite(v).all()) for v in self._fitted.values())
        if not ok:
            raise ConfigError(
                f"stain.reference {name!r}: no usable {self.method} fit (too little tissue or a "
                "single colour); pick an H&E image that is mostly tissue"
            )
        self._fitted = {k: v.detach().cpu().float() for k, v in self._fitted.items()}

    def _place(self, device: torch.device) -> None:
        """Put torchstain's Macenko reference on ``device`` (Reinhard always runs on the CPU)."""
        if self._macenko is not None and device != self._device:
            self._macenko.HERef = self._fitted["he_ref"].to(device)
            self._macenko.maxCRef = self._fitted["max_c_ref"].to(device)
        self._device = device

    def _normalize_one(self, patch: Tensor) -> Tensor | None:
        """Run torchstain on one uint8 ``[3, H, W]`` patch; the result, or None if it failed."""
        try:
            if self._macenko is not None:
                out, _, _ = self._macenko.normalize(
                    patch, Io=IO, alpha=ALPHA, beta=BETA, stains=False
                )  # int32 [H, W, 3], values clamped to <= 255
            elif self._reinhard is not None:
                out = self._reinhard.normalize(patch)  # uint8 [H, W, 3]
            else:
                raise RuntimeError("StainNormalizer with method 'none' has nothing to apply")
        except (torch.linalg.LinAlgError, IndexError) as exc:
            log.debug("stain %s failed on a patch: %s", self.method, exc)
            return None
        # torchstain casts NaN to integers without a check: INT_MIN on x86 CPUs, 0 on CUDA and
        # in its uint8 (Reinhard) cast. Finite results lie in [0, 255], and a tissue patch never
        # comes out all black, so these two bounds catch a NaN patch on every device.
        lo, hi = torch.stack([out.min(), out.max()]).tolist()
        if lo < 0 or hi <= 0:
            log.debug("stain %s gave NaN on a patch", self.method)
            return None
        result: Tensor = out.permute(2, 0, 1).to(torch.uint8)
        return result

    @torch.no_grad()
    def __call__(self, patches: Tensor) -> Tensor:
        """Normalize a batch of patches.

        Args:
            patches: uint8 ``[B, 3, H, W]`` RGB, on any device.

        Returns:
            uint8 ``[B, 3, H, W]`` on the same device; ``patches`` itself when ``method`` is
            ``none``.
        """
        if not isinstance(patches, Tensor) or patches.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 tensor, got {getattr(patches, 'dtype', patches)}")
        if patches.ndim != 4 or patches.shape[1] != 3:
            raise ValueError(f"expected [B, 3, H, W] patches, got shape {list(patches.shape)}")
        if not self.enabled:
            return patches
        work = patches if self._macenko is not None else patches.cpu()
        self._place(work.device)
        out = work.clone()
        keep = (tissue_fraction(work) >= self.min_tissue_fraction).tolist()
        for i, has_tissue in enumerate(keep):
            normed = self._normalize_one(work[i]) if has_tissue else None
            if normed is None:
                self.n_passthrough += 1
            else:
                out[i] = normed
                self.n_normalized += 1
        return out.to(patches.device)

    def provenance(self) -> dict[str, Any]:
        """What the output depends on, as plain JSON values; equal settings give equal dicts.

        The fitted reference values are included (rounded to 6 decimals), so a changed shipped
        reference or torchstain fit also changes the dict.
        """
        if not self.enabled:
            return {"method": "none"}
        prov: dict[str, Any] = {
            "method": self.method,
            "reference": self._reference_id,
            "min_tissue_fraction": self.min_tissue_fraction,
        }
        if self.method == "macenko":
            prov["params"] = {"Io": IO, "alpha": ALPHA, "beta": BETA}
        prov.update({k: _rounded(v) for k, v in self._fitted.items()})
        # torchstain.__version__ says 1.3.0 in the 1.4.1 wheel; the distribution metadata is right.
        prov["torchstain"] = importlib.metadata.version("torchstain")
        return prov

    def __repr__(self) -> str:
        return (
            f"StainNormalizer(method={self.method!r}, reference={self._reference_id!r}, "
            f"min_tissue_fraction={self.min_tissue_fraction})"
        )


def cost_per_region(
    method: str,
    n_patches: int = 256,
    px: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> float:
    """Seconds to normalize one region's patches (default: 256 patches of 256 px = 4096 px).

    The patches are the shipped reference, tiled and flipped/rolled per patch so each is a
    different all-tissue image (every patch takes the full torchstain path, none passes through).

    Args:
        method: ``macenko`` or ``reinhard`` (``none`` measures the call overhead).
        n_patches: patches per region.
        px: patch side.
        device: where the patches live.
        seed: for the per-patch shifts.
    """
    norm = StainNormalizer(method, device=device)
    ref, _ = load_reference(None)
    reps = math.ceil(px / min(ref.shape[1:]))
    tile = ref.repeat(1, reps, reps)[:, :px, :px]
    gen = torch.Generator().manual_seed(seed)
    shifts = torch.randint(0, px, (n_patches, 2), generator=gen).tolist()
    patches = torch.stack([tile.roll(s, dims=(1, 2)) for s in shifts]).to(device)
    norm(patches[:2])  # warm-up (allocator, lazy kernels)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    norm(patches)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start
