"""The hierarchy over another patch encoder: a random-init timm ViT of another width under
HIPT, through `make pipeline` (extract -> pretrain-4k -> encode-4k -> finetune -> heatmap, and
extract -> predict on an external cohort); the width flows from the stores.

The default suite runs timm's own 64-d test ViT (160-px inputs) through `make pipeline` in
test_make_pipeline.py; the 192-d ViT-Tiny (224-px inputs) costs ~20 s per region on one CPU
thread, so it runs here, with the slow tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_settings import TINY_PIPELINE

from hipt.demo.cohort import CohortConfig, CohortFiles, generate_cohort
from hipt.features.store import read_meta
from hipt.models import read_card

#: (architecture, width, input px, tokens per patch side)
ENCODERS = [("timm:vit_tiny_patch16_224", 192, 224, 14)]
pytestmark = pytest.mark.slow
SETTINGS = ["TASKS=subtype", *TINY_PIPELINE, "extract.skip_background=true", "predict.bootstrap=50"]


def _cohort(root: Path, n: int, seed: int) -> CohortFiles:
    settings = CohortConfig(n_patients=n, slides_per_patient=[1, 1], regions=[1, 1],
                            fine_mpp_every=0, include_sample=False)  # fmt: skip
    return generate_cohort(root, settings, seed=seed)


@pytest.fixture(scope="module", params=ENCODERS, ids=lambda p: p[0])
def encoder(request: pytest.FixtureRequest) -> tuple[str, int, int, int]:
    return request.param


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, encoder) -> Path:
    """The pipeline over a 6-patient cohort and a 4-patient external cohort."""
    import torch
    from pipelines.pipeline import main

    from hipt.models import build, export_model

    root = tmp_path_factory.mktemp("anyenc")
    train, ext = _cohort(root / "train", 6, 11), _cohort(root / "ext", 4, 12)
    torch.manual_seed(0)
    weights = export_model(build(encoder[0]), root / "vit")  # random init, our export format
    out = root / "out"
    code = main([f"SLIDES={train.manifest_csv}", f"COHORT={train.cohort_csv}", f"OUT={out}",
                 f"CHECKPOINT256={weights}", f"MODEL256={encoder[0]}",
                 f"EXTERNAL_SLIDES={ext.manifest_csv}", f"EXTERNAL_COHORT={ext.cohort_csv}",
                 *SETTINGS])  # fmt: skip
    assert code == 0
    return out


def test_stores_record_the_encoder_and_its_width(run, encoder):
    """Every store (cohort and external): model_256 = the timm architecture, feats256 of its
    width, its input side resized from 256 px with the architecture's own normalization."""
    arch, width, px, _ = encoder
    stores = sorted(run.glob("**/*.zarr"))
    assert len(stores) >= 10
    for path in stores:
        meta = read_meta(path)
        assert meta is not None and meta.complete
        assert (meta.model_256, meta.feature_dim_256, meta.input_px_256) == (arch, width, px)
        assert meta.norm_256 == "mean=0.5,0.5,0.5 std=0.5,0.5,0.5 resize=bilinear-antialias"
        assert meta.stain == "none"


def test_vit4k_and_slide_models_are_built_for_the_encoders_width(run, encoder):
    """pretrain-4k's ViT-4K reads D-d grids (card input_dim), and so does each fold's HIPT
    model (grid_dim); its card's trained_on records D."""
    width = encoder[1]
    vit4k = read_card(next(run.glob("**/pretrain_4k/*.safetensors")))
    assert vit4k.kwargs["input_dim"] == width
    folds = sorted(run.glob("**/finetune/subtype/fold_*/model.safetensors"))
    assert folds
    for fold in folds:
        card = read_card(fold)
        assert card.kwargs["grid_dim"] == width
        assert card.trained_on is not None and card.trained_on["feature_dim_256"] == width


def test_heatmap_and_predict_ran_on_the_new_encoder(run, encoder):
    """The heatmap pages exist (token maps on the encoder's own token grid) and the external
    cohort was predicted by the fold ensemble."""
    pages = sorted(run.glob("heatmaps/subtype/*/index.html"))
    assert pages
    summary = json.loads(next(run.glob("heatmaps/subtype/*/summary.json")).read_text())
    assert summary["tokens_per_patch"] == encoder[3]
    preds = run / "external" / "predict" / "subtype" / "predictions.csv"
    assert len(preds.read_text().strip().splitlines()) == 1 + 4
