"""The registry: names, overrides, errors, parameter counts and torch.compile."""

from __future__ import annotations

import pytest
import torch

from hipt.models import available, build, load_checkpoint


def _n_params(model: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def test_available_names() -> None:
    assert set(available()) >= {
        "vit256_small",
        "vit4k_xs",
        "hipt_lgp",
        "abmil",
        "meanpool",
        "vit256_tiny_test",
        "vit4k_tiny_test",
        "hipt_lgp_tiny_test",
    }


def test_unknown_name_lists_available() -> None:
    with pytest.raises(KeyError, match="vit256_small"):
        build("vit_huge")


@pytest.mark.parametrize(
    ("name", "count"),
    [("vit256_small", 21_665_664), ("vit4k_xs", 2_781_504), ("hipt_lgp", 3_376_515)],
)
def test_official_parameter_counts(name: str, count: int) -> None:
    assert _n_params(build(name)) == count


def test_frozen_hipt_lgp_trains_only_the_global_stage() -> None:
    model = build("hipt_lgp", freeze_4k=True)
    assert _n_params(model) == 3_376_515
    assert _n_params(model, trainable=True) == 595_011


def test_overrides_reach_the_factory_and_are_recorded() -> None:
    model = build("hipt_lgp_tiny_test", n_classes=4, dropout=0.1)
    assert model.classifier.out_features == 4
    assert model.hipt_architecture == "hipt_lgp_tiny_test"
    assert model.hipt_overrides == {"n_classes": 4, "dropout": 0.1}
    with pytest.raises(TypeError):
        build("vit4k_tiny_test", not_an_argument=1)


def test_tiny_dims_chain() -> None:
    vit256, vit4k = build("vit256_tiny_test"), build("vit4k_tiny_test")
    assert vit4k.input_dim == vit256.embed_dim
    assert build("hipt_lgp_tiny_test").embed_dim == vit4k.embed_dim


@pytest.mark.slow
def test_compile_matches_eager() -> None:
    torch.manual_seed(0)
    eager = build("vit256_tiny_test").eval()
    compiled = build("vit256_tiny_test", compile=True).eval()
    load_checkpoint(compiled, eager.state_dict())  # loads into the module under the wrapper
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-5)
