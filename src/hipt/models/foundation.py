"""Pathology foundation models as patch encoders under the HIPT hierarchy.

Each entry is the published architecture, rebuilt with timm's ``VisionTransformer`` (no other
package), its input size and normalization, and where its weights are published. We never
download: the user fetches the weights under the model's licence and passes the local file as
``checkpoint256=`` (plain timm state dicts, ``model.``/``module.`` prefixes and ``.safetensors``
files load strictly). 256-px patches are resized to the input size, as the peers do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from timm.layers import SwiGLUPacked
from torch import nn

from hipt.models.factory import register_model
from hipt.models.patch_vit import PatchViT
from hipt.models.spec import PATCH_ENCODER, PIXELS, ModelSpec, Preprocessing, WeightsSource

__all__ = ["FOUNDATION_MODELS", "FoundationModel"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
#: Published normalizations of models trained with their own statistics.
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)

NC_ND = "CC-BY-NC-ND-4.0 (gated; non-commercial, no derivatives)"
KAIKO = "Kaiko Non-Commercial Public License v1"

#: DINOv2-style giant/huge blocks: SwiGLU MLP (packed fc1), SiLU, LayerScale 1e-5.
_SWIGLU: dict[str, Any] = {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU, "init_values": 1e-5}


@dataclasses.dataclass(frozen=True)
class FoundationModel:
    """One published patch encoder.

    Attributes:
        name: registry key.
        vit: timm ``VisionTransformer`` arguments of the published architecture.
        embedding: ``cls`` or ``cls+mean`` (Virchow's CLS + mean patch token).
        input_px: input side (256-px patches are resized to it).
        mean: normalization mean ([0, 1] scale).
        std: normalization std.
        source: where the weights are, their licence and published size.
    """

    name: str
    vit: dict[str, Any]
    embedding: str
    input_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: WeightsSource

    @property
    def spec(self) -> ModelSpec:
        """The registry declaration (pixels in, this preprocessing)."""
        pre = Preprocessing(input_px=self.input_px, mean=self.mean, std=self.std)
        return ModelSpec(
            kind=PATCH_ENCODER, inputs=(PIXELS,), preprocessing=pre, source=self.source
        )

    @property
    def output_dim(self) -> int:
        """Width of the embedding."""
        return int(self.vit["embed_dim"]) * (2 if self.embedding == "cls+mean" else 1)

    def factory(self) -> Callable[..., PatchViT]:
        """``(**overrides) -> PatchViT`` (overrides such as ``depth=2`` make tiny variants)."""

        def make(**overrides: Any) -> PatchViT:
            embedding = overrides.pop("embedding", self.embedding)
            return PatchViT(
                embedding=embedding,
                # any input side works (pos-embed interpolated: DINO's 96-px local crops in
                # pretrain-256); at input_px nothing changes
                **{"img_size": self.input_px, "dynamic_img_size": True, **self.vit, **overrides},
            )

        make.__doc__ = f"{self.name}: {self.source.params} parameters, {self.output_dim}-d."
        return make


def _vit(embed_dim: int, depth: int, heads: int, patch: int, **extra: Any) -> dict[str, Any]:
    return {"embed_dim": embed_dim, "depth": depth, "num_heads": heads, "patch_size": patch,
            **extra}  # fmt: skip


_HF = "https://huggingface.co/"


def _kaiko(name: str, vit: dict[str, Any], timm_name: str, params: str) -> FoundationModel:
    """kaiko.ai's DINO ViTs (normalized with mean = std = 0.5), as the timm hub mirrors them."""
    where = f"{_HF}1aurent/{timm_name}.kaiko_ai_towards_large_pathology_fms"
    source = WeightsSource(where, KAIKO, params, "Aben et al., arXiv:2404.15217")
    return FoundationModel(name, vit, "cls", 224, HALF, HALF, source)


def _hoptimus(name: str, licence: str) -> FoundationModel:
    """Bioptimus' H-optimus-0/1: one ViT-g/14 recipe (4 registers, SwiGLU), their own mean/std."""
    vit = _vit(1536, 40, 24, 14, mlp_ratio=2.66667 * 2, reg_tokens=4, no_embed_class=True,
               **_SWIGLU)  # fmt: skip
    repo = "H-optimus-" + name[-1]
    source = WeightsSource(f"{_HF}bioptimus/{repo} (model.safetensors)", licence, "1.1B",
                           f"model card, bioptimus/{repo}")  # fmt: skip
    return FoundationModel(name, vit, "cls", 224, HOPTIMUS_MEAN, HOPTIMUS_STD, source)


FOUNDATION_MODELS: tuple[FoundationModel, ...] = (
    FoundationModel(
        "uni", _vit(1024, 24, 16, 16, init_values=1e-5), "cls", 224, IMAGENET_MEAN, IMAGENET_STD,
        WeightsSource(f"{_HF}MahmoodLab/UNI (pytorch_model.bin)", NC_ND, "304M",
                      "Chen et al., Nature Medicine 2024 (ViT-L/16)", tolerance="1M"),
    ),
    FoundationModel(
        "uni2_h",
        _vit(1536, 24, 24, 14, mlp_ratio=2.66667 * 2, reg_tokens=8, no_embed_class=True, **_SWIGLU),
        "cls", 224, IMAGENET_MEAN, IMAGENET_STD,
        WeightsSource(f"{_HF}MahmoodLab/UNI2-h (pytorch_model.bin)", NC_ND, "681M",
                      "model card, MahmoodLab/UNI2-h"),
    ),
    FoundationModel(
        "virchow", _vit(1280, 32, 16, 14, mlp_ratio=5.3375, **_SWIGLU), "cls+mean", 224,
        IMAGENET_MEAN, IMAGENET_STD,
        WeightsSource(f"{_HF}paige-ai/Virchow (pytorch_model.bin)",
                      "Apache-2.0 (gated)", "632M", "Vorontsov et al., Nature Medicine 2024",
                      tolerance="1M"),
    ),
    FoundationModel(
        "virchow2", _vit(1280, 32, 16, 14, mlp_ratio=5.3375, reg_tokens=4, **_SWIGLU),
        "cls+mean", 224, IMAGENET_MEAN, IMAGENET_STD,
        WeightsSource(f"{_HF}paige-ai/Virchow2 (pytorch_model.bin)", NC_ND, "632M",
                      "Zimmermann et al., arXiv:2408.00738", tolerance="1M"),
    ),
    _hoptimus("h_optimus_0", "Apache-2.0 (gated)"),
    _hoptimus("h_optimus_1", "Bioptimus academic licence (gated, manual approval)"),
    FoundationModel(
        "prov_gigapath",
        _vit(1536, 40, 24, 16, mlp_ratio=2.66667 * 2, **_SWIGLU), "cls", 224,
        IMAGENET_MEAN, IMAGENET_STD,
        WeightsSource(f"{_HF}prov-gigapath/prov-gigapath (pytorch_model.bin)",
                      "Apache-2.0 code; gated weights", "1.13B", "Xu et al., Nature 2024"),
    ),
    FoundationModel(
        "lunit_vits8", _vit(384, 12, 6, 8), "cls", 224, LUNIT_MEAN, LUNIT_STD,
        WeightsSource("https://github.com/lunit-io/benchmark-ssl-pathology (releases)",
                      "non-commercial (Lunit licence)", "22M", "Kang et al., CVPR 2023"),
    ),
    _kaiko("kaiko_vits16", _vit(384, 12, 6, 16), "vit_small_patch16_224", "22M"),
    _kaiko("kaiko_vits8", _vit(384, 12, 6, 8), "vit_small_patch8_224", "22M"),
    _kaiko("kaiko_vitb16", _vit(768, 12, 12, 16), "vit_base_patch16_224", "86M"),
    _kaiko("kaiko_vitb8", _vit(768, 12, 12, 8), "vit_base_patch8_224", "86M"),
    # published with a 518-px (37x37) pos_embed, fed 224-px inputs (interpolated)
    _kaiko("kaiko_vitl14",
           _vit(1024, 24, 16, 14, reg_tokens=4, no_embed_class=True, init_values=1e-5,
                img_size=518, dynamic_img_size=True),
           "vit_large_patch14_reg4_224", "304M"),
)  # fmt: skip

for _model in FOUNDATION_MODELS:
    register_model(_model.name, _model.spec)(_model.factory())
