"""The published foundation encoders are the published architectures, with their preprocessing.

Independent facts used here: the published parameter counts (papers and model cards), timm's own
named architectures (``vit_large_patch16_224``, ``vit_giant_patch14_reg4_dinov2``, ...), the
published normalizations, and Virchow's embedding recipe (CLS token concatenated with the mean of
the patch tokens, register tokens excluded). Large models are built on the meta device only.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import SwiGLUPacked
from torch import nn

from hipt.errors import UnknownNameError
from hipt.models import build, model_spec, normalize_patches
from hipt.models.foundation import FOUNDATION_MODELS
from hipt.models.patch_vit import feature_width, token_size
from hipt.models.preprocess import PatchPreprocess

#: Parameter counts of the rebuilt architectures (no classifier), as computed when the recipes
#: were checked against the published ones: a changed recipe changes them.
EXACT_PARAMS = {
    "uni": 303_350_784,
    "uni2_h": 681_394_176,
    "virchow": 631_229_184,
    "virchow2": 631_239_424,
    "h_optimus_0": 1_134_774_272,
    "h_optimus_1": 1_134_774_272,
    "prov_gigapath": 1_134_953_984,
    "kaiko_vitl14": 304_370_688,
    "kaiko_vits16": 21_665_664,
    "kaiko_vits8": 21_670_272,
    "lunit_vits8": 21_670_272,
    "kaiko_vitb16": 85_798_656,
    "kaiko_vitb8": 85_807_872,
}
#: Published width of each model's embedding (embed_dim; Virchow's CLS + mean: 2 x 1280).
PUBLISHED_WIDTH = {
    "uni": 1024,
    "uni2_h": 1536,
    "virchow": 2560,
    "virchow2": 2560,
    "h_optimus_0": 1536,
    "h_optimus_1": 1536,
    "prov_gigapath": 1536,
    "kaiko_vitl14": 1024,
    "kaiko_vits16": 384,
    "kaiko_vits8": 384,
    "lunit_vits8": 384,
    "kaiko_vitb16": 768,
    "kaiko_vitb8": 768,
}
#: Published token (patch) side of each model.
PUBLISHED_PATCH = {
    "uni": 16,
    "uni2_h": 14,
    "virchow": 14,
    "virchow2": 14,
    "h_optimus_0": 14,
    "h_optimus_1": 14,
    "prov_gigapath": 16,
    "kaiko_vitl14": 14,
    "kaiko_vits16": 16,
    "kaiko_vits8": 8,
    "lunit_vits8": 8,
    "kaiko_vitb16": 16,
    "kaiko_vitb8": 8,
}
#: Tokens before the patch tokens: CLS + registers (Virchow2 4, UNI2-h 8, H-optimus 4, kaiko L 4).
PREFIX_TOKENS = {"virchow": 1, "virchow2": 5}

_SWIGLU: dict[str, Any] = {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}
#: The same architecture from timm's own named recipes (plus the published overrides).
TIMM_EQUIVALENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "uni": ("vit_large_patch16_224", {"init_values": 1e-5}),
    "uni2_h": (
        "vit_giant_patch14_reg4_dinov2",
        {"img_size": 224, "depth": 24, "reg_tokens": 8},
    ),
    "virchow": (
        "vit_huge_patch14_224",
        {**_SWIGLU, "mlp_ratio": 5.3375, "init_values": 1e-5},
    ),
    "virchow2": (
        "vit_huge_patch14_224",
        {**_SWIGLU, "mlp_ratio": 5.3375, "init_values": 1e-5, "reg_tokens": 4},
    ),
    "h_optimus_0": ("vit_giant_patch14_reg4_dinov2", {"img_size": 224}),
    "h_optimus_1": ("vit_giant_patch14_reg4_dinov2", {"img_size": 224}),
    "prov_gigapath": ("vit_giant_patch14_dinov2", {"img_size": 224, "patch_size": 16}),
    "kaiko_vitl14": ("vit_large_patch14_reg4_dinov2", {}),
    "kaiko_vits16": ("vit_small_patch16_224", {}),
    "kaiko_vits8": ("vit_small_patch8_224", {}),
    "lunit_vits8": ("vit_small_patch8_224", {}),
    "kaiko_vitb16": ("vit_base_patch16_224", {}),
    "kaiko_vitb8": ("vit_base_patch8_224", {}),
}

FOUNDATION_NAMES = sorted(m.name for m in FOUNDATION_MODELS)


@functools.cache
def _meta_model(name: str) -> nn.Module:
    """The full-size model on the meta device (no memory), built once per name."""
    with torch.device("meta"):
        return build(name)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_every_foundation_model_is_listed_here():
    """The registry's published encoders are exactly the ones whose facts this file checks (a
    new entry must come with its published count, width and timm equivalent)."""
    registered = {m.name for m in FOUNDATION_MODELS if model_spec(m.name).source is not None}
    assert registered == set(EXACT_PARAMS) == set(PUBLISHED_WIDTH) == set(TIMM_EQUIVALENTS)


@pytest.mark.parametrize("name", FOUNDATION_NAMES)
def test_parameter_count_and_width_match_the_publication(name: str):
    """On the meta device, each model has the published parameter count (within its stated
    tolerance), the exact count of the checked recipe, the published embedding width and patch
    size."""
    source = model_spec(name).source
    assert source is not None
    model = _meta_model(name)
    n_params = sum(p.numel() for p in model.parameters())
    published, tolerance = source.published_params()
    assert abs(n_params - published) <= tolerance, (name, n_params, published, tolerance)
    assert n_params == EXACT_PARAMS[name]
    assert feature_width(model) == PUBLISHED_WIDTH[name]
    assert token_size(model) == PUBLISHED_PATCH[name]


@pytest.mark.parametrize("name", FOUNDATION_NAMES)
def test_state_dict_layout_equals_timms_named_architecture(name: str):
    """Every key and shape equals the one of timm's named architecture with the published
    overrides, so the published timm state dicts load strictly."""
    arch, kwargs = TIMM_EQUIVALENTS[name]
    with torch.device("meta"):
        reference = _shapes(timm.create_model(arch, num_classes=0, **kwargs))
    assert _shapes(_meta_model(name)) == reference


@pytest.mark.parametrize("name", FOUNDATION_NAMES)
def test_tiny_variant_runs_forward(name: str):
    """A tiny variant of every recipe (also SwiGLU, registers, 518-px pos-embed) embeds a batch of
    two input_px images into [2, feature_width] finite values that depend on the image."""
    torch.manual_seed(0)
    model = build(name, embed_dim=32, depth=2, num_heads=2).eval()
    side = model_spec(name).preprocessing.input_px
    with torch.no_grad():
        out = model(torch.randn(2, 3, side, side))
    width = 64 if name in PREFIX_TOKENS else 32
    assert feature_width(model) == width
    assert out.shape == (2, width)
    assert torch.isfinite(out).all()
    assert not torch.equal(out[0], out[1])  # LayerScale 1e-5 at init: differences are small


@pytest.mark.parametrize("name", sorted(PREFIX_TOKENS))
def test_virchow_embedding_is_cls_and_mean_of_patch_tokens(name: str):
    """Virchow's embedding is [final-normed CLS, mean of the patch tokens], the registers (CLS +
    4 for Virchow2) left out of the mean; a mean over every token would differ."""
    torch.manual_seed(0)
    model = build(name, embed_dim=32, depth=2, num_heads=2).eval()
    n_prefix = PREFIX_TOKENS[name]
    x = torch.randn(2, 3, 224, 224)
    seen: list[torch.Tensor] = []
    hook = model.norm.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    with torch.no_grad():
        out = model(x)
        tokens = model.forward_features(x)
    hook.remove()
    assert tokens.shape == (2, n_prefix + (224 // 14) ** 2, 32)
    cls = tokens[:, 0]
    # CLS after the final LayerNorm (unit weight, zero bias at init) of the last block's output
    torch.testing.assert_close(cls, F.layer_norm(seen[0][:, 0], (32,), eps=1e-6))
    assert not torch.allclose(cls, seen[0][:, 0])
    expected = torch.cat([cls, tokens[:, n_prefix:].mean(dim=1)], dim=-1)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    if n_prefix > 1:
        with_registers = torch.cat([cls, tokens[:, 1:].mean(dim=1)], dim=-1)
        assert not torch.allclose(out, with_registers)


@pytest.mark.parametrize("name", FOUNDATION_NAMES)
def test_every_spec_declares_its_preprocessing(name: str):
    """Each foundation spec takes 224-px RGB inputs resized from the patches, with 3-channel
    mean/std in (0, 1)."""
    pre = model_spec(name).preprocessing
    assert pre is not None
    assert pre.input_px == 224
    assert pre.resize is True
    assert len(pre.mean) == 3 and len(pre.std) == 3
    assert all(0 < v < 1 for v in (*pre.mean, *pre.std))


@pytest.mark.parametrize("name", ["h_optimus_0", "h_optimus_1"])
def test_h_optimus_uses_its_published_normalization(name: str):
    """H-optimus declares the mean/std of its model card, not ImageNet's."""
    pre = model_spec(name).preprocessing
    assert pre.mean == pytest.approx((0.707223, 0.578729, 0.703617), abs=1e-9)
    assert pre.std == pytest.approx((0.211883, 0.230117, 0.177517), abs=1e-9)


def test_imagenet_and_kaiko_normalizations():
    """UNI/Virchow/Prov-GigaPath use ImageNet statistics; kaiko models use 0.5/0.5."""
    for name in ("uni", "uni2_h", "virchow", "virchow2", "prov_gigapath"):
        pre = model_spec(name).preprocessing
        assert pre.mean == pytest.approx((0.485, 0.456, 0.406)), name
        assert pre.std == pytest.approx((0.229, 0.224, 0.225)), name
    for name in ("kaiko_vits16", "kaiko_vits8", "kaiko_vitb16", "kaiko_vitb8", "kaiko_vitl14"):
        pre = model_spec(name).preprocessing
        assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5), name


def test_timm_architecture_by_name():
    """``timm:vit_tiny_patch16_224`` builds a 192-d encoder (depth override honoured) declaring
    timm's pretrained input size and mean/std."""
    torch.manual_seed(0)
    model = build("timm:vit_tiny_patch16_224", depth=2).eval()
    assert len(model.blocks) == 2
    assert feature_width(model) == 192
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 192)
    pre = model_spec("timm:vit_tiny_patch16_224").preprocessing
    cfg = timm.models.get_pretrained_cfg("vit_tiny_patch16_224")
    assert pre.input_px == 224 == cfg.input_size[-1]
    assert pre.mean == tuple(cfg.mean) and pre.std == tuple(cfg.std)


def test_unknown_timm_architecture_is_one_line():
    """An unknown ``timm:`` name raises UnknownNameError with a one-line message naming it."""
    with pytest.raises(UnknownNameError) as info:
        build("timm:not_a_model")
    message = str(info.value)
    assert "not_a_model" in message
    assert "\n" not in message


def test_preprocess_resizes_256_px_patches_to_224():
    """A 256-px uint8 batch becomes [B, 3, 224, 224]: antialiased bilinear resize, then
    (x / 255 - mean) / std with the encoder's statistics."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    pre = model_spec("uni").preprocessing
    out = PatchPreprocess(pre)(x)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32
    resized = F.interpolate(x.float(), 224, mode="bilinear", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (resized / 255 - mean) / std, atol=1e-6, rtol=0)
    # not a plain (non-antialiased) resize
    plain = (F.interpolate(x.float(), 224, mode="bilinear") / 255 - mean) / std
    assert (out - plain).abs().max() > 1e-2


def test_preprocess_without_resize_is_normalize_patches():
    """For vit256_small (no resize) preprocessing is bit-identical to normalize_patches."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    pre = model_spec("vit256_small").preprocessing
    out = PatchPreprocess(pre)(x)
    assert torch.equal(out, normalize_patches(x, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
