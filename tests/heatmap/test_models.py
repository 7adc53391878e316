"""Encoder weights are checked against the store; slide models load from export or checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from hipt.errors import HiptError
from hipt.features import FeatureStoreMeta
from hipt.heatmap.models import check_weights, load_slide_model, resolve_input
from hipt.models import build, export_backbone
from hipt.models.checkpoints import sha256_file

CPU = torch.device("cpu")


def test_check_weights_refuses_every_mismatch_with_one_line(tmp_path):
    """Right file: its sha; wrong file, missing file, or a file for a random store: refused."""
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"weights a")
    b.write_bytes(b"weights b")
    sha = sha256_file(a)
    assert check_weights("256", str(a), sha) == sha
    assert check_weights("256", None, None) is None
    cases = [
        (str(b), sha, "is not the ViT-256"),
        (None, sha, "pass checkpoint256="),
        (str(a), None, "random ViT-256"),
        (str(tmp_path / "x"), sha, "does not exist"),
    ]
    for given, stored, words in cases:
        with pytest.raises(HiptError, match=words) as err:
            check_weights("256", given, stored)
        assert "\n" not in str(err.value)


def _meta(**kw) -> FeatureStoreMeta:
    base = dict(
        slide_id="s", source_path="s.tif", source_size_bytes=1, model_256="vit256_tiny_test",
        model_4k="vit4k_tiny_test", checkpoint_256_sha256=None, checkpoint_4k_sha256=None,
        random_weights=True, feature_dim_256=32, feature_dim_4k=16, target_mpp=0.5,
        region_px=512, patch_px=32, tiling_config_hash="t",
    )  # fmt: skip
    return FeatureStoreMeta(**{**base, **kw})


def test_load_slide_model_from_safetensors_export_and_fold_folder(tmp_path):
    """export_backbone + sidecar rebuilds the same weights; a fold folder finds model.*."""
    torch.manual_seed(0)
    model = build("abmil_tiny_test", input_dim=16)
    fold = tmp_path / "fold_0"
    export_backbone(model, "abmil_tiny_test", fold / "model", extra_meta={"input": "feats4k"})
    loaded = load_slide_model(fold, CPU)
    assert loaded.name == "abmil_tiny_test" and loaded.input == "feats4k"
    x = torch.randn(5, 16)
    model.eval()
    torch.testing.assert_close(loaded.model(x).attention, model(x).attention)
    with pytest.raises(HiptError, match="pick one"):
        load_slide_model(tmp_path, CPU)


def test_load_slide_model_from_lightning_style_checkpoint(tmp_path):
    """{state_dict: model.*, hipt: {model_name, overrides, input}} loads strictly, weights only."""
    torch.manual_seed(1)
    model = build("hipt_lgp_tiny_test", n_classes=3)
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hipt": {"model_name": "hipt_lgp_tiny_test", "overrides": {"n_classes": 3}},
        "epoch": 3,
    }
    torch.save(ckpt, tmp_path / "model.ckpt")
    loaded = load_slide_model(tmp_path / "model.ckpt", CPU)
    bag = torch.randn(4, 256, 32)
    model.eval()
    torch.testing.assert_close(loaded.model(bag).attention, model(bag).attention)
    assert resolve_input(loaded, "auto", _meta()) == "feats256"
    bad = dict(ckpt, hipt={})
    torch.save(bad, tmp_path / "bad.ckpt")
    with pytest.raises(HiptError, match="cannot tell the architecture"):
        load_slide_model(tmp_path / "bad.ckpt", CPU)
    (tmp_path / "bad.json").write_text(json.dumps({"model_name": "hipt_lgp_tiny_test"}))
    with pytest.raises(HiptError, match="strict load"):
        load_slide_model(tmp_path / "bad.ckpt", CPU)  # n_classes 2 vs 3 stored


def test_resolve_input_by_width():
    """abmil on 16-d regions reads feats4k, on 32-d patches feats256; config wins."""
    from hipt.heatmap.models import SlideModel

    meta = _meta()
    m4k = SlideModel(build("abmil_tiny_test", input_dim=16), "abmil", None, None, "")
    m256 = SlideModel(build("abmil_tiny_test"), "abmil", None, None, "")
    assert resolve_input(m4k, "auto", meta) == "feats4k"
    assert resolve_input(m256, "auto", meta) == "feats256"
    assert resolve_input(m256, "feats4k", meta) == "feats4k"
    with pytest.raises(HiptError, match="takes 8-d"):
        resolve_input(SlideModel(build("abmil_tiny_test", input_dim=8), "a", None, None, ""),
                      "auto", meta)  # fmt: skip


def test_loads_what_the_finetune_stage_writes(tmp_path):
    """A real `make finetune` fold (model.ckpt) rebuilds with its input kind and gives attention."""
    from pipelines.finetune import main as finetune

    from hipt.features import open_store
    from hipt.finetune.synthetic import make_planted_cohort
    from hipt.heatmap.inference import slide_attention

    cohort = make_planted_cohort(tmp_path / "cohort", n_patients=8)
    out = tmp_path / "ft"
    rc = finetune(["TASK=subtype", f"cohort={cohort.csv}", f"features={cohort.features}",
                   f"out={out}", "model.name=hipt_lgp_tiny_test", "train.max_epochs=1",
                   "split.n_folds=2", "wandb.mode=disabled"])  # fmt: skip
    assert rc == 0
    loaded = load_slide_model(out / "fold_0", CPU)
    assert loaded.name == "hipt_lgp_tiny_test" and loaded.path.name == "model.ckpt"
    store = open_store(next(cohort.features.glob("*.zarr")))
    kind = resolve_input(loaded, "auto", store.meta)
    assert kind == loaded.input
    bag = store.feats256() if kind == "feats256" else store.feats4k()
    att = slide_attention(loaded.model, bag, CPU)
    assert att.shape == (store.n_regions,) and abs(att.sum() - 1) < 1e-5
