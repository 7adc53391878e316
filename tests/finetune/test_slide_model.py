"""Input selection for the slide models: the feats4k fast path is exact, mismatches are refused."""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import store_meta

from hipt.errors import ConfigError
from hipt.finetune.config import ModelConfig
from hipt.finetune.slide_model import build_model, plan_model
from hipt.models import bag_to_grid, build, export_model
from hipt.provenance import sha256_file


@pytest.fixture(scope="module")
def vit4k_export(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "vit4k_tiny.safetensors"
    return export_model(build("vit4k_tiny_test"), path)


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


def test_standardize_fits_on_the_training_patients_only(planted, tmp_path, monkeypatch):
    """model.standardize=true: each fold's saved scaler holds the mean/std (numpy, float64) of
    the region embeddings of that fold's training patients, not of all patients, so nothing
    of the test fold leaks into the model; the heatmap loader restores it strictly."""
    import numpy as np
    import pandas as pd
    from finetune_helpers import ft_config

    from hipt.features import open_store
    from hipt.finetune.runner import run_finetune
    from hipt.heatmap.models import load_slide_model

    monkeypatch.setenv("WANDB_MODE", "disabled")
    extra = ["model.name=hipt_lgp_tiny_test", "model.input=feats4k", "model.standardize=true"]
    cfg = ft_config(
        "subtype", planted.csv, planted.features, tmp_path, *extra, "train.max_epochs=1"
    )
    run_finetune(cfg)
    cohort = pd.read_csv(planted.csv, dtype=str)

    def feats(patients) -> np.ndarray:
        slides = cohort[cohort["patient_id"].isin(set(patients))]["slide_id"]
        stores = [open_store(planted.features / f"{s}.zarr") for s in slides]
        return np.concatenate([s.feats4k().astype(np.float64) for s in stores])

    everyone = feats(cohort["patient_id"])
    for k in range(3):
        fold = pd.read_csv(tmp_path / "splits" / f"fold_{k}.csv", dtype=str)
        train = feats(fold.loc[fold["part"] == "train", "patient_id"])
        scaler = load_slide_model(tmp_path / f"fold_{k}", torch.device("cpu")).model.scaler
        np.testing.assert_allclose(scaler.mean.numpy(), train.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(scaler.std.numpy(), train.std(0), rtol=1e-4, atol=1e-6)
        assert int(scaler.count) == len(train) < len(everyone)
        assert not np.allclose(scaler.mean.numpy(), everyone.mean(0), rtol=1e-5, atol=1e-6)


def test_encode_once_gives_the_same_model_as_running_the_vit4k_every_step(
    planted, vit4k_export, tmp_path, monkeypatch
):
    """data.encode_once (ViT-4K run once per bag, cached) and the per-step ViT-4K train the
    same global stage: equal test predictions and weights, and both checkpoints still take
    feats256 (the heatmap path)."""
    import pandas as pd
    from finetune_helpers import ft_config

    from hipt.features import open_store
    from hipt.finetune.runner import run_finetune
    from hipt.heatmap.models import load_slide_model

    monkeypatch.setenv("WANDB_MODE", "disabled")
    extra = ["model.name=hipt_lgp_tiny_test", f"model.checkpoint_4k={vit4k_export}"]
    extra.append("train.max_epochs=2")
    outs = {}
    for once in (True, False):
        out = tmp_path / f"once_{once}"
        cfg = ft_config(
            "response", planted.csv, planted.features, out, *extra, f"data.encode_once={once}"
        )
        run_finetune(cfg)
        outs[once] = out
    for k in range(3):
        a, b = (pd.read_csv(outs[o] / f"fold_{k}" / "predictions.csv") for o in (True, False))
        pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-5, rtol=1e-4)
    models = [load_slide_model(outs[o] / "fold_0", torch.device("cpu")) for o in (True, False)]
    assert models[0].card.consumes == models[1].card.consumes == "feats256"
    for (name, x), (_, y) in zip(
        models[0].model.state_dict().items(), models[1].model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4, msg=name)
    slide = pd.read_csv(planted.csv, dtype=str)["slide_id"].iloc[0]
    bag = torch.from_numpy(open_store(planted.features / f"{slide}.zarr").feats256())
    with torch.no_grad():
        torch.testing.assert_close(models[0].model(bag).logits, models[1].model(bag).logits)
