"""Cohort validation: every problem is reported, at once, with its CSV row numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_helpers import make_store, mark_incomplete

from hipt.cohort import CohortError, load_cohort
from hipt.tasks.base import build_task
from hipt.tasks.config import TargetConfig

TEN = [f"S{i}" for i in range(10)]


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """S0..S9 agree; OTHER was made by another ViT-4K; BROKEN is incomplete."""
    folder = tmp_path_factory.mktemp("features")
    for i, sid in enumerate(TEN):
        make_store(folder, sid, seed=i)
    make_store(folder, "OTHER", checkpoint_4k_sha256="b" * 64)
    mark_incomplete(make_store(folder, "BROKEN"))
    return folder


def write_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cohort.csv"
    path.write_text(text)
    return path


def problems(
    csv: Path,
    features: Path,
    task: str = "subtype",
    n_folds: int = 2,
    expect: dict | None = None,
    **target,
) -> list[str]:
    t = build_task(task, TargetConfig(**target))
    with pytest.raises(CohortError) as info:
        load_cohort(csv, features, t.read_labels, expect, lambda p: t.check_strata(p, n_folds))
    return [str(p) for p in info.value.problems]


def find(found: list[str], *needles: str) -> str:
    hits = [p for p in found if all(n in p for n in needles)]
    assert len(hits) == 1, f"expected one problem with {needles} in {found}"
    return hits[0]


SUBTYPE_OK = "\n".join(f"{s},P{i},{'AB'[i % 2]}" for i, s in enumerate(TEN[:6]))


def test_store_problems_with_rows(tmp_path, features):
    """Unknown slide id, incomplete store and a store from another checkpoint than expected
    are each reported with their row (header = row 1)."""
    csv = write_csv(
        tmp_path,
        f"slide_id,patient_id,subtype\n{SUBTYPE_OK}\nNOPE,P9,A\nBROKEN,P10,B\nOTHER,P11,A\n",
    )
    found = problems(csv, features, expect={"checkpoint_4k_sha256": "a" * 64})
    assert find(found, "unknown slide id", "NOPE").startswith("row 8:")
    assert find(found, "incomplete feature store").startswith("row 9:")
    assert find(found, "checkpoint_4k_sha256", "OTHER").startswith("row 10:")


def test_store_from_other_extractor_is_reported_without_expect(tmp_path, features):
    """Without expect_checkpoint_4k, a store whose settings differ from the majority is named."""
    csv = write_csv(tmp_path, f"slide_id,patient_id,subtype\n{SUBTYPE_OK}\nOTHER,P11,A\n")
    hit = find(problems(csv, features), "other settings")
    assert hit.startswith("row 8:") and "'b" in hit


def test_duplicates_missing_and_invalid_labels(tmp_path, features):
    """Duplicate slide ids (both rows), empty labels and labels outside target.classes."""
    csv = write_csv(
        tmp_path,
        "slide_id,patient_id,subtype\nS0,P0,A\nS1,P1,B\nS0,P2,A\n"
        "S3,P3,\nS4,P4,Z\nS5,P5,B\nS6,P6,A\n",
    )
    found = problems(csv, features, classes=["A", "B"])
    assert find(found, "duplicate slide_id 'S0'").startswith("rows 2, 4:")
    assert find(found, "missing subtype").startswith("row 5:")
    assert find(found, "invalid subtype 'Z'").startswith("row 6:")


def test_conflicting_patient_labels_and_small_classes(tmp_path, features):
    """A patient whose slides disagree, and a class with fewer patients than folds."""
    csv = write_csv(
        tmp_path,
        "slide_id,patient_id,subtype\nS0,P0,A\nS1,P0,B\nS2,P1,A\n"
        "S3,P2,A\nS4,P3,B\nS5,P4,B\nS6,P5,C\n",
    )
    found = problems(csv, features, n_folds=2)
    assert find(found, "conflicting labels", "P0").startswith("rows 2, 3:")
    assert find(found, "class 'C'", "fewer than the 2 folds").startswith("row 8:")


def test_survival_problems(tmp_path, features):
    """Missing and non-numeric times, negative times, bad event flags, too few events."""
    csv = write_csv(
        tmp_path,
        "slide_id,patient_id,time,event\nS0,P0,10,1\nS1,P1,,1\n"
        "S2,P2,-3,0\nS3,P3,abc,1\nS4,P4,5,2\nS5,P5,7,0\n",
    )
    found = problems(csv, features, task="survival", n_folds=3)
    assert find(found, "missing time").startswith("row 3:")
    assert find(found, "negative time").startswith("row 4:")
    assert find(found, "time is not a number").startswith("row 5:")
    assert find(found, "event must be 0 or 1").startswith("row 6:")
    assert find(found, "patient(s) with an event").startswith("row 2:")


def test_stage_and_response_labels(tmp_path, features):
    """Stage 'V' and response 'maybe' are invalid; the accepted spellings parse."""
    csv = write_csv(
        tmp_path,
        "slide_id,patient_id,stage,response\nS0,P0,Stage IIA,responder\n"
        "S1,P1,V,maybe\nS2,P2,iv,0\nS3,P3,I,Non-Responder\n",
    )
    assert find(problems(csv, features, task="stage", n_folds=1), "invalid stage 'V'").startswith(
        "row 3:"
    )
    assert find(
        problems(csv, features, task="response", n_folds=1), "invalid response 'maybe'"
    ).startswith("row 3:")


def test_all_problems_in_one_error(tmp_path, features):
    """One CSV with six kinds of problems raises once and lists all of them."""
    csv = write_csv(
        tmp_path,
        "slide_id,patient_id,subtype\nS0,P0,A\nS0,P1,A\nS2,P2,\n"
        "NOPE,P3,B\nS4,P4,A\nS5,P4,B\nBROKEN,P6,B\nS7,P7,B\n",
    )
    found = problems(csv, features)
    assert len(found) == 5
    for needle in ("duplicate", "missing subtype", "unknown slide", "conflicting", "incomplete"):
        find(found, needle)


def test_tcga_style_columns_and_valid_cohort(tmp_path, features):
    """case_id + survival_months + censorship (1 = censored) are read; .svs ids find stores;
    slides of one patient are pooled."""
    csv = write_csv(
        tmp_path,
        "case_id,slide_id,survival_months,censorship\nP0,S0.svs,10,0\n"
        "P0,S1.svs,10,0\nP1,S2,20,1\nP2,S3,5,0\n",
    )
    t = build_task("survival", TargetConfig())
    cohort = load_cohort(csv, features, t.read_labels)
    pts = cohort.patients.set_index("patient_id")
    assert pts.loc["P0", "slide_ids"] == ("S0.svs", "S1.svs")
    assert pts["event"].tolist() == [1, 0, 1]
    assert cohort.slides["store"].str.endswith("S0.zarr").any()


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("model_256", {"model_256": "uni", "feature_dim_256": 1024, "input_px_256": 224}),
        ("stain", {"stain": '{"method":"macenko"}'}),
    ],
)
def test_stores_of_another_patch_encoder_or_stain_are_refused(tmp_path, field, change):
    """A cohort whose stores mix patch encoders (or stain normalizations) is refused, naming
    the odd store's row and the differing field in one line."""
    folder = tmp_path / "features"
    for i, sid in enumerate(TEN[:6]):
        make_store(folder, sid, seed=i)
    make_store(folder, "MIXED", **change)
    csv = write_csv(tmp_path, f"slide_id,patient_id,subtype\n{SUBTYPE_OK}\nMIXED,P11,A\n")
    hit = find(problems(csv, folder), "other settings", field)
    assert hit.startswith("row 8:") and "\n" not in hit
