"""`make predict` on planted-signal cohorts: fold models reproduce their own test predictions,
the ensemble generalises to an independent cohort, provenance and bad stores are handled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from finetune_helpers import ft_config
from pipelines.predict import main as predict
from planted import make_planted_cohort

from hipt.finetune.runner import run_finetune

QUIET = ["wandb.mode=disabled", "bootstrap=50"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A planted cohort (basis seed 0), its subtype and survival finetune runs, and an
    independent cohort with the same label directions but other patients (seed 7)."""
    root = tmp_path_factory.mktemp("predict")
    train = make_planted_cohort(root / "train", n_patients=30, seed=0, basis_seed=0)
    external = make_planted_cohort(root / "ext", n_patients=24, seed=7, basis_seed=0, prefix="X")
    runs = {}
    for task, arch, epochs in (("subtype", "meanpool_tiny_test", 8),
                               ("survival", "abmil_tiny_test", 10)):  # fmt: skip
        out = root / task
        extra = [f"model.name={arch}", f"train.max_epochs={epochs}"]
        run_finetune(ft_config(task, train.csv, train.features, out, *extra))
        runs[task] = out
    return {"train_csv": train.csv, "train_features": train.features, "ext_csv": external.csv,
            "ext_features": external.features, **runs}  # fmt: skip


def _args(model: Path, cohort: Path, features: Path, out: Path, *extra: str) -> list[str]:
    return [f"MODEL={model}", f"COHORT={cohort}", f"FEATURES={features}", f"OUT={out}", *QUIET,
            *extra]  # fmt: skip


def test_each_fold_model_reproduces_its_own_test_predictions(trained, tmp_path):
    """Fold k's model on fold k's test patients gives fold_k/predictions.csv again."""
    cohort = pd.read_csv(trained["train_csv"], dtype=str)
    for fold in sorted(trained["subtype"].glob("fold_*")):
        written = pd.read_csv(fold / "predictions.csv", dtype={"patient_id": str})
        subset = cohort[cohort["patient_id"].isin(set(written["patient_id"]))]
        csv = tmp_path / f"{fold.name}.csv"
        subset.to_csv(csv, index=False)
        out = tmp_path / f"pred_{fold.name}"
        assert predict(_args(fold, csv, trained["train_features"], out)) == 0
        got = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str})
        got = got.set_index("patient_id").loc[written["patient_id"]].reset_index()
        for col in ("prob_A", "prob_B", "prob_C"):
            np.testing.assert_allclose(got[col], written[col], rtol=0, atol=1e-6)
        assert got["pred"].tolist() == written["pred"].tolist()
        assert got["label"].tolist() == written["label"].tolist()


def test_the_ensemble_generalises_with_intervals_and_is_the_fold_mean(trained, tmp_path):
    """MODEL=<finetune folder>: every fold predicts; the ensemble is the fold mean of the
    probabilities (its class the arg-max of the mean); on the independent cohort its AUROC is
    high, with a bootstrap interval around it; plots and W&B-free outputs exist."""
    out = tmp_path / "ext"
    args = _args(trained["subtype"], trained["ext_csv"], trained["ext_features"], out)
    assert predict(args) == 0
    preds = pd.read_csv(out / "predictions.csv")
    folds = sorted(p.name for p in trained["subtype"].glob("fold_*"))
    for c in "ABC":
        mean = np.mean([preds[f"{f}_prob_{c}"] for f in folds], axis=0)
        np.testing.assert_allclose(preds[f"prob_{c}"], mean, rtol=0, atol=1e-12)
    probs = preds[[f"prob_{c}" for c in "ABC"]].to_numpy()
    assert preds["pred"].tolist() == [("A", "B", "C")[i] for i in probs.argmax(1)]
    metrics = pd.read_csv(out / "metrics.csv")
    ens = metrics[(metrics["model"] == "ensemble") & (metrics["metric"] == "auroc")].iloc[0]
    assert ens["value"] >= 0.9 and ens["ci_low"] <= ens["value"] <= ens["ci_high"]
    assert set(metrics["model"]) == {"ensemble", *folds}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"]["evaluated"] == 24 and summary["totals"]["slides_failed"] == 0
    assert (
        len(summary["models"]) == len(folds)
        and "mean over the fold models" in (summary["ensemble_rule"])
    )
    assert (out / "roc.png").is_file() and (out / "confusion.png").is_file()
    slides = pd.read_csv(out / "slides.csv")
    assert {"top1_region", "top1_x", "top1_y", "prob_A"} <= set(slides.columns)
    assert predict(args) == 0  # up to date: nothing is redone
    assert json.loads((out / "summary.json").read_text())["fingerprint"] == summary["fingerprint"]


def test_survival_metrics_have_intervals_and_unlabelled_patients_are_predicted(trained, tmp_path):
    """Survival: Harrell's and Antolini's C and IBS with intervals; patients without time and
    event are predicted but not evaluated, and the summary counts them."""
    cohort = pd.read_csv(trained["ext_csv"], dtype=str)
    hidden = cohort["patient_id"].isin(["X000", "X001", "X002"])
    cohort.loc[hidden, ["time", "event"]] = ""
    csv = tmp_path / "partly.csv"
    cohort.to_csv(csv, index=False)
    out = tmp_path / "surv"
    assert predict(_args(trained["survival"], csv, trained["ext_features"], out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"]["unlabelled"] == 3 and summary["totals"]["evaluated"] == 21
    ens = pd.read_csv(out / "metrics.csv").query("model == 'ensemble'").set_index("metric")
    assert {"c_index", "c_index_td", "ibs"} <= set(ens.index)
    assert ens.loc["c_index", "value"] >= 0.7
    assert (out / "km.png").is_file()
    preds = pd.read_csv(out / "predictions.csv")
    assert {"risk", "hazard_0", "surv_3"} <= set(preds.columns) and len(preds) == 24


def test_a_store_from_other_weights_stops_the_run_in_one_line(trained, tmp_path, capsys):
    """A store made with another ViT-4K checkpoint: one error line naming the store, the field
    and both values, before anything is written; allow_mismatch=true runs and records it."""
    features = tmp_path / "features"
    shutil.copytree(trained["ext_features"], features)
    store = sorted(features.glob("*.zarr"))[2]
    zarr.open_group(str(store), mode="r+").attrs["checkpoint_4k_sha256"] = "f" * 64
    out = tmp_path / "out"
    capsys.readouterr()
    assert predict(_args(trained["subtype"], trained["ext_csv"], features, out)) == 1
    errors = [ln for ln in capsys.readouterr().err.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and str(store) in errors[0]
    assert "checkpoint_4k_sha256: store has 'ffff" in errors[0] and "expected None" in errors[0]
    assert not (out / "predictions.csv").exists()
    rc = predict(_args(trained["subtype"], trained["ext_csv"], features, out,
                       "allow_mismatch=true"))  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["allow_mismatch"] and summary["mismatches"][0]["store"] == str(store)


def test_a_missing_store_is_skipped_and_the_others_go_on(trained, tmp_path):
    """A slide without a store is reported with its reason and skipped (exit 1); its patient is
    still predicted from its other slides, or listed as failed when it had none."""
    features = tmp_path / "features"
    shutil.copytree(trained["ext_features"], features)
    cohort = pd.read_csv(trained["ext_csv"], dtype=str)
    gone = cohort["slide_id"].iloc[0]
    shutil.rmtree(features / f"{gone}.zarr")
    out = tmp_path / "out"
    assert predict(_args(trained["subtype"], trained["ext_csv"], features, out)) == 1
    summary = json.loads((out / "summary.json").read_text())
    (failed,) = summary["failed"]
    assert failed["slide_id"] == gone and "no feature store" in failed["error"]
    preds = pd.read_csv(out / "predictions.csv")
    assert gone not in ";".join(preds["slide_ids"])
    lost = summary["totals"]["patients_failed"]
    assert len(preds) == 24 - lost and summary["totals"]["slides_failed"] == 1


def test_an_official_hipt_model_predicts_with_its_task_named(tmp_path):
    """An official HIPT_GP_FC file (``s_0_checkpoint.pt``: a state dict in the official layout)
    predicts a cohort of 192-d region features once the task and class names are given; its
    card records the official encoders, and stores of that kind pass the provenance check."""
    import torch

    from hipt.models import build

    cohort = make_planted_cohort(tmp_path / "c", n_patients=6, dim_256=384, dim_4k=192,
                                 model_256="vit256_small", model_4k="vit4k_xs")  # fmt: skip
    path = tmp_path / "s_0_checkpoint.pt"
    torch.manual_seed(0)
    torch.save(build("hipt_lgp", vit4k=None, n_classes=3).state_dict(), path)
    out = tmp_path / "out"
    args = _args(path, cohort.csv, cohort.features, out, "TASK=subtype", "classes=[A,B,C]")
    assert predict(args) == 0
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == 6 and {"prob_A", "prob_B", "prob_C", "pred", "label"} <= set(preds)
    model = json.loads((out / "summary.json").read_text())["models"][0]
    assert model["consumes"] == "feats4k" and model["meta"]["official_class"] == "HIPT_GP_FC"
    assert (out / "metrics.csv").is_file()
