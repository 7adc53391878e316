"""Encoder weights are checked against the store; slide models load from export or checkpoint."""

from __future__ import annotations

import pytest
import torch
from stores import store_meta

from hipt.errors import HiptError
from hipt.features import FeatureStoreMeta
from hipt.heatmap.models import check_provenance, check_weights, load_slide_model
from hipt.models import build, export_model
from hipt.provenance import sha256_file

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
    return store_meta(**{**base, **kw})


def test_load_slide_model_from_an_export_and_a_fold_folder(tmp_path):
    """export_model + card rebuilds the same weights and input kind; a fold folder finds
    model.safetensors; a folder of folds asks to pick one."""
    torch.manual_seed(0)
    model = build("abmil_tiny_test", input_dim=16)
    fold = tmp_path / "fold_0"
    export_model(model, fold / "model", consumes="feats4k", output={"task": "subtype"})
    loaded = load_slide_model(fold, CPU)
    assert loaded.architecture == "abmil_tiny_test" and loaded.card.consumes == "feats4k"
    x = torch.randn(5, 16)
    model.eval()
    torch.testing.assert_close(loaded.model(x).attention, model(x).attention)
    export_model(model, tmp_path / "fold_1" / "model", consumes="feats4k")
    with pytest.raises(HiptError, match="holds 2 folds .*pick one"):
        load_slide_model(tmp_path, CPU)


def test_other_files_are_refused_in_one_line(tmp_path):
    """A Lightning .ckpt, an export without its card, or an encoder instead of a slide head:
    one line each, nothing guessed from keys or prefixes."""
    model = build("hipt_lgp_tiny_test", n_classes=3)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "model.ckpt")  # fmt: skip
    with pytest.raises(HiptError, match="expected an exported model") as err:
        load_slide_model(tmp_path / "model.ckpt", CPU)
    assert "\n" not in str(err.value)
    path = export_model(model, tmp_path / "lgp")
    path.with_suffix(".json").unlink()
    with pytest.raises(HiptError, match="missing card"):
        load_slide_model(path, CPU)
    encoder = export_model(build("vit4k_tiny_test"), tmp_path / "v4k")
    with pytest.raises(HiptError, match="region encoder .*not a finetuned slide model"):
        load_slide_model(encoder, CPU)


def test_input_comes_from_the_card_and_the_registry_bounds_it(tmp_path):
    """auto reads the card's input kind; a kind the architecture cannot read is refused."""
    export_model(build("abmil_tiny_test", input_dim=16), tmp_path / "m", consumes="feats4k")
    loaded = load_slide_model(tmp_path / "m.safetensors", CPU)
    assert loaded.input_kind("auto") == "feats4k"
    assert loaded.input_kind("feats256") == "feats256"
    with pytest.raises(HiptError, match="cannot read pixels"):
        loaded.input_kind("pixels")


def test_a_store_unlike_the_training_stores_is_refused(tmp_path):
    """A model whose card says it was trained on other encoders refuses the store in one line,
    naming the field and both values."""
    export_model(build("abmil_tiny_test"), tmp_path / "m", consumes="feats256",
                 trained_on=_meta(checkpoint_256_sha256="a" * 64).provenance())  # fmt: skip
    loaded = load_slide_model(tmp_path / "m.safetensors", CPU)
    check_provenance(loaded, _meta(checkpoint_256_sha256="a" * 64), tmp_path / "s.zarr")
    with pytest.raises(HiptError, match="checkpoint_256_sha256: store has None, expected 'aaa"):
        check_provenance(loaded, _meta(), tmp_path / "s.zarr")


def test_loads_what_the_finetune_stage_writes(tmp_path):
    """A real `make finetune` fold (model.safetensors + card) loads with its input kind, accepts
    the stores it was trained on and gives attention."""
    from pipelines.finetune import main as finetune
    from planted import make_planted_cohort

    from hipt.features import open_store
    from hipt.heatmap.inference import slide_attention

    cohort = make_planted_cohort(tmp_path / "cohort", n_patients=8)
    out = tmp_path / "ft"
    rc = finetune(["TASK=subtype", f"cohort={cohort.csv}", f"features={cohort.features}",
                   f"out={out}", "model.name=hipt_lgp_tiny_test", "train.max_epochs=1",
                   "split.n_folds=2", "wandb.mode=disabled"])  # fmt: skip
    assert rc == 0
    loaded = load_slide_model(out / "fold_0", CPU)
    assert loaded.architecture == "hipt_lgp_tiny_test" and loaded.path.name == "model.safetensors"
    path = next(cohort.features.glob("*.zarr"))
    store = open_store(path)
    check_provenance(loaded, store.meta, path)
    kind = loaded.input_kind("auto")
    assert kind == loaded.card.consumes
    bag = store.feats256() if kind == "feats256" else store.feats4k()
    att = slide_attention(loaded.model, bag, CPU)
    assert att.shape == (store.n_regions,) and abs(att.sum() - 1) < 1e-5
