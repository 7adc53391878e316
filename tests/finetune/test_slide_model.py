"""Input selection for the slide models: the feats4k fast path is exact, mismatches are refused."""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import store_meta

from hipt.errors import ConfigError
from hipt.finetune.config import ModelConfig
from hipt.finetune.slide_model import build_model, plan_model
from hipt.models import bag_to_grid, build, export_backbone, sha256_file


@pytest.fixture(scope="module")
def vit4k_export(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "vit4k_tiny.safetensors"
    return export_backbone(build("vit4k_tiny_test"), "vit4k_tiny_test", path)


def test_fast_path_is_taken_only_when_exact(vit4k_export):
    """auto reads feats4k only for a frozen ViT-4K whose checkpoint made the stores."""
    sha = sha256_file(vit4k_export)
    same, other = store_meta("s", checkpoint_4k_sha256=sha), store_meta("s")
    ck = str(vit4k_export)
    assert (
        plan_model(ModelConfig("hipt_lgp_tiny_test", checkpoint_4k=ck), same, 2).kind == "feats4k"
    )
    assert (
        plan_model(ModelConfig("hipt_lgp_tiny_test", checkpoint_4k=ck), other, 2).kind == "feats256"
    )
    assert (
        plan_model(
            ModelConfig("hipt_lgp_tiny_test", freeze_4k=False, checkpoint_4k=ck), same, 2
        ).kind
        == "feats256"
    )
    assert plan_model(ModelConfig("hipt_lgp_tiny_test"), same, 2).kind == "feats256"
    with pytest.raises(ConfigError, match="cannot be finetuned"):
        plan_model(ModelConfig("hipt_lgp_tiny_test", freeze_4k=False, input="feats4k"), same, 2)
    with pytest.raises(ConfigError, match="use model.input=feats256"):
        plan_model(ModelConfig("hipt_lgp_tiny_test", checkpoint_4k=ck, input="feats4k"), other, 2)
    plan = plan_model(ModelConfig("abmil_tiny_test", input="feats4k"), same, 3)
    assert plan.kind == "feats4k" and plan.kwargs["input_dim"] == 16


def test_fast_path_gives_the_same_logits(vit4k_export):
    """HIPT_LGP on feats256 through its frozen ViT-4K equals HIPT_LGP on the feats4k that an
    independently loaded copy of that ViT-4K computes (what the extraction stage stores)."""
    torch.manual_seed(1)
    plan = plan_model(
        ModelConfig("hipt_lgp_tiny_test", checkpoint_4k=str(vit4k_export)),
        store_meta("s", checkpoint_4k_sha256=sha256_file(vit4k_export)),
        3,
    )
    model = build_model(plan, store_meta("s")).eval()
    region_encoder = build("vit4k_tiny_test", checkpoint=vit4k_export).eval()
    feats256 = torch.randn(5, 256, 32)
    with torch.no_grad():
        feats4k = region_encoder(bag_to_grid(feats256))
        torch.testing.assert_close(model(feats256).logits, model(feats4k).logits, atol=1e-5, rtol=0)


def test_feature_width_mismatch_is_a_config_error():
    """A 384-d model on 32-d stores fails before training, naming both widths."""
    plan = plan_model(ModelConfig("abmil"), store_meta("s"), 2)
    with pytest.raises(ConfigError, match="32-d feats256 but model 'abmil' takes 384-d"):
        build_model(plan, store_meta("s"))
