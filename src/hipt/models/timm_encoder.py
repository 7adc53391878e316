"""Any timm architecture as a patch encoder: ``model_256=timm:<architecture>``.

The model is built with random weights (``pretrained=False``: nothing is downloaded) and no
classifier; its input size and normalization come from timm's default pretrained config of the
architecture. Weights are the user's local file (``checkpoint256=``), loaded strictly.
"""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

from hipt.errors import UnknownNameError
from hipt.models.spec import PATCH_ENCODER, PIXELS, ModelSpec, Preprocessing

__all__ = ["TIMM_PREFIX", "is_timm_name", "timm_factory", "timm_spec"]

TIMM_PREFIX = "timm:"


def is_timm_name(name: str) -> bool:
    """Whether ``name`` asks for a timm architecture (``timm:vit_small_patch16_224``)."""
    return str(name).startswith(TIMM_PREFIX)


def _architecture(name: str) -> str:
    arch = str(name)[len(TIMM_PREFIX) :].strip()
    if not arch or not timm.is_model(arch.split(".")[0]):
        close = timm.list_models(f"*{arch.split('.')[0][:12]}*")[:5] if arch else []
        hint = f"; close: {', '.join(close)}" if close else ""
        raise UnknownNameError(
            f"'{name}': timm has no architecture '{arch}'{hint} (timm.list_models() lists them)"
        )
    return arch


def timm_spec(name: str) -> ModelSpec:
    """Declaration of ``timm:<arch>``: input size and mean/std from timm's pretrained config."""
    cfg = timm.models.get_pretrained_cfg(_architecture(name))
    size = int(cfg.input_size[-1]) if cfg is not None else 224
    mean = tuple(float(v) for v in (cfg.mean if cfg is not None else (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in (cfg.std if cfg is not None else (0.229, 0.224, 0.225)))
    if len(mean) != 3 or len(std) != 3:
        raise UnknownNameError(f"'{name}' is not an RGB model (mean {mean})")
    pre = Preprocessing(input_px=size, mean=mean, std=std)  # type: ignore[arg-type]
    return ModelSpec(kind=PATCH_ENCODER, inputs=(PIXELS,), preprocessing=pre)


def timm_factory(name: str) -> Any:
    """``(**overrides) -> nn.Module``: the architecture without classifier, random weights."""
    arch = _architecture(name)

    def make(**overrides: Any) -> nn.Module:
        try:  # ViTs: any input side (pos-embed interpolated), e.g. DINO's local crops
            model = timm.create_model(
                arch, pretrained=False, num_classes=0, **{"dynamic_img_size": True, **overrides}
            )
        except TypeError:  # architectures without that option (CNNs take any size anyway)
            model = timm.create_model(arch, pretrained=False, num_classes=0, **overrides)
        width = getattr(model, "num_features", 0)
        setattr(model, "feature_dim", int(width) if isinstance(width, int) else 0)  # noqa: B010
        return model

    return make
