"""Bad inputs across stages: each is one clear error and an exit code, and nothing is lost.

Exit codes (all stages): 0 done; 1 bad input or a failed slide (the others are done);
2 configuration error; 3 output folder locked by another run; 130 interrupted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from robust_utils import (
    SMALL_TILING,
    TINY_EXTRACT,
    TINY_FINETUNE,
    error_lines,
    stage,
    tree_digest,
)

from hipt.errors import DamagedStoreError
from hipt.features import open_store
from hipt.samples import sample_slide_path
from hipt.slides.synthetic import write_bad_inputs


def test_corrupt_slides_fail_alone_and_never_reach_extraction(tmp_path, capsys):
    """Every damaged or unsupported file (the tiling matrix) and a missing one fail with one
    line each in summary.json, exit 1; the good slide is tiled, and extraction over that tile
    output sees only the good slide."""
    bad = write_bad_inputs(tmp_path / "bad")
    rows = [{"slide_id": k, "path": str(p)} for k, p in bad.items()]
    rows += [
        {"slide_id": "missing", "path": str(tmp_path / "nope.svs")},
        {"slide_id": "good", "path": str(sample_slide_path())},
    ]
    manifest = tmp_path / "slides.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    tiles = tmp_path / "tiles"
    assert (
        stage("tile", f"slides={manifest}", f"out={tiles}", "wandb.mode=disabled", *SMALL_TILING)
        == 1
    )
    summary = json.loads((tiles / "summary.json").read_text())
    failed = {f["slide_id"]: f["error"] for f in summary["failed"]}
    assert set(failed) == set(bad) | {"missing"}
    for sid, error in failed.items():
        assert "\n" not in error and error.strip(), sid
    assert len(error_lines(capsys.readouterr().err)) >= len(failed)
    assert [o["slide_id"] for o in summary["ok"]] == ["good"]
    assert not any((tiles / "slides").glob("corrupt*"))  # no partial output of a failed slide
    features = tmp_path / "features"
    assert stage("extract_features", f"tiles={tiles}", f"out={features}", *TINY_EXTRACT) == 0
    assert sorted(p.name for p in features.glob("*.zarr")) == ["good.zarr"]


def _backbone(tmp_path: Path, name: str, damage: str | None = None) -> Path:
    """A ViT checkpoint file: a real export, or one with foreign keys (``wrong_keys``, with the
    export's sidecar) or without its JSON sidecar (``no_sidecar``)."""
    from safetensors.torch import save_file

    from hipt.models import build, export_model

    torch.manual_seed(7)
    good = export_model(build(name), tmp_path / f"{name}.safetensors")
    if damage is None:
        return good
    path = tmp_path / f"{name}-{damage}.safetensors"
    save_file({"encoder.layer0.weight": torch.zeros(3, 3)}, str(path))
    if damage == "wrong_keys":
        path.with_suffix(".json").write_text(good.with_suffix(".json").read_text())
    return path


@pytest.mark.parametrize("damage", ["wrong_keys", "no_sidecar"])
def test_bad_checkpoint_is_one_line(damage, sample_tiles, planted, tmp_path, capsys):
    """A checkpoint that does not fit the model: extraction and finetuning both exit 1 (bad
    input), each with one line naming the file, and no store or fold is written."""
    wrong = _backbone(tmp_path, "vit256_tiny_test", damage)
    out = tmp_path / "features"
    code = stage(
        "extract_features",
        f"tiles={sample_tiles}",
        f"out={out}",
        *TINY_EXTRACT,
        f"checkpoint256={wrong}",
    )
    assert code == 1
    (error,) = error_lines(capsys.readouterr().err)
    assert wrong.name in error
    assert not any(out.glob("*.zarr"))
    wrong4k = _backbone(tmp_path, "vit4k_tiny_test", damage)
    ft = tmp_path / "ft"
    code = stage(
        "finetune",
        "task=subtype",
        f"cohort={planted.csv}",
        f"features={planted.features}",
        f"out={ft}",
        *TINY_FINETUNE,
        "model.name=hipt_lgp_tiny_test",
        f"model.checkpoint_4k={wrong4k}",
    )
    assert code == 1
    (error,) = error_lines(capsys.readouterr().err)
    assert wrong4k.name in error
    assert not any(ft.glob("fold_*/done.json"))


def _mutate(csv: Path, out: Path, how: str) -> Path:
    df = pd.read_csv(csv, dtype=str)
    if how == "missing_column":
        df = df.drop(columns=["subtype"])
    elif how == "empty_patient":
        df.loc[2, "patient_id"] = ""
    elif how == "duplicate_slide":
        df.loc[3, "slide_id"] = df.loc[2, "slide_id"]
    elif how == "no_store":
        df.loc[1, "slide_id"] = "NOT-EXTRACTED"
    elif how == "bad_label":
        df.loc[4, "subtype"] = ""
    elif how == "patient_two_labels":
        first = df["patient_id"].duplicated(keep=False).idxmax()
        other = df.index[(df["patient_id"] == df.loc[first, "patient_id"])][-1]
        df.loc[other, "subtype"] = "A" if df.loc[first, "subtype"] != "A" else "B"
    path = out / f"{how}.csv"
    df.to_csv(path, index=False)
    return path


CSV_ERRORS = [
    "missing_column",
    "empty_patient",
    "duplicate_slide",
    "no_store",
    "bad_label",
    "patient_two_labels",
]


@pytest.fixture(scope="module")
def finished_finetune(planted, tmp_path_factory):  # noqa: ANN001, ANN201
    """A finished subtype run on the planted cohort (its folder is reused by the bad runs)."""
    out = tmp_path_factory.mktemp("ft") / "subtype"
    code = stage(
        "finetune",
        "task=subtype",
        f"cohort={planted.csv}",
        f"features={planted.features}",
        f"out={out}",
        *TINY_FINETUNE,
    )
    assert code == 0
    return out


@pytest.mark.parametrize("how", CSV_ERRORS)
def test_cohort_csv_errors_name_the_rows_and_lose_nothing(
    how, planted, finished_finetune, tmp_path, capsys
):
    """Each validation error of the cohort CSV: exit 1, the message names the problem (and
    its CSV rows), and the finished run in the same folder is untouched."""
    before = tree_digest(finished_finetune)
    csv = _mutate(planted.csv, tmp_path, how)
    code = stage(
        "finetune",
        "task=subtype",
        f"cohort={csv}",
        f"features={planted.features}",
        f"out={finished_finetune}",
        *TINY_FINETUNE,
        "overwrite=true",
    )
    assert code == 1
    err = capsys.readouterr().err
    (error,) = error_lines(err)
    assert str(csv) in error
    message = err[err.index(" ERROR ") :]
    expect = {
        "missing_column": "subtype",
        "empty_patient": "row 4",
        "duplicate_slide": "rows",
        "no_store": "NOT-EXTRACTED",
        "bad_label": "row 6",
        "patient_two_labels": "rows",
    }
    assert expect[how] in message
    assert tree_digest(finished_finetune) == before


def test_open_store_refuses_incomplete(sample_features, tmp_path):
    """A store without its completion flag (as a killed writer leaves it) is never read."""
    import shutil

    from hipt.errors import HiptError

    store = next(sample_features.glob("*.zarr"))
    copy = tmp_path / store.name
    shutil.copytree(store, copy)
    meta = copy / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["complete"] = False
    meta.write_text(json.dumps(doc))
    with pytest.raises(HiptError):
        open_store(copy)


def _damage_a_feats256_chunk(store: Path) -> None:
    """Overwrite one feats256 chunk with random bytes of the same length (a disk fault)."""
    chunks = (p for p in (store / "feats256").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk = sorted(chunks)[0]
    chunk.write_bytes(os.urandom(chunk.stat().st_size))


def test_a_damaged_store_is_one_line_and_extraction_recomputes_it(sample_tiles, tmp_path, capsys):
    """One feats256 chunk overwritten with random bytes: reading it is one DamagedStoreError
    naming the store and the fix; the heatmap stops with that line (exit 1); extraction into
    the same folder finds the store stale (its crc32c checksum fails) and recomputes exactly
    the features it had made."""
    features = tmp_path / "features"
    args = [f"tiles={sample_tiles}", f"out={features}", *TINY_EXTRACT]
    assert stage("extract_features", *args) == 0
    store = next(features.glob("*.zarr"))
    good = open_store(store).feats256()
    _damage_a_feats256_chunk(store)
    with pytest.raises(DamagedStoreError, match="damaged feature store .*make extract-features"):
        open_store(store).feats256()
    capsys.readouterr()
    code = stage("heatmap", f"slide={sample_slide_path()}", f"features={store}",
                 f"out={tmp_path / 'hm'}", "progress=false", "wandb.mode=disabled")  # fmt: skip
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 1 and str(store) in line and "damaged feature store" in line
    assert stage("extract_features", *args) == 0
    assert "damaged" in capsys.readouterr().err
    np.testing.assert_array_equal(open_store(store).feats256(), good)


def test_finetune_stops_on_a_damaged_store_with_one_line(planted, tmp_path, capsys):
    """Finetune on a cohort with one damaged store: exit 1, one error line naming the store."""
    import shutil

    features = tmp_path / "features"
    shutil.copytree(planted.features, features)
    store = sorted(features.glob("*.zarr"))[3]
    _damage_a_feats256_chunk(store)
    capsys.readouterr()
    code = stage("finetune", "task=subtype", f"cohort={planted.csv}", f"features={features}",
                 f"out={tmp_path / 'ft'}", *TINY_FINETUNE)  # fmt: skip
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 1 and str(store) in line and "re-extract" in line
