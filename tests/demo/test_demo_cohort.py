"""The demo cohort: deterministic, its labels readable from the slides' pixels, sane survival."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from demo_utils import micro_config, slide_path

from hipt.demo.cohort import dense_score, generate_cohort, settings_key, split_banks
from hipt.demo.phenotype import (
    DENSE,
    EXTENT,
    SHARE_RANGE,
    draw_patients,
    layout_stats,
    risk_score,
    slide_layout,
)
from hipt.slides import open_slide
from hipt.slides.synthetic import saturation_unit, tissue_tiles_from_sample


def test_banks_split_by_colour_and_are_large_enough():
    """The colour rule gives two banks of >= 16 tiles; nuclei-dense tiles are darker and bluer."""
    tiles = tissue_tiles_from_sample(tile_px=128)
    dense, stroma = split_banks(tiles)
    assert min(len(dense), len(stroma)) >= 16
    assert dense_score(dense).min() >= 0.5 > 0.25 >= dense_score(stroma).max()
    rgb_d, rgb_s = dense.reshape(-1, 3).mean(0), stroma.reshape(-1, 3).mean(0)
    assert rgb_d.mean() < rgb_s.mean() - 20  # darker
    assert rgb_d[2] - rgb_d[0] > rgb_s[2] - rgb_s[0] + 10  # bluer relative to red


def test_same_seed_same_cohort_and_reuse(micro_cohort, micro_cfg, tmp_path):
    """Two generations from one seed are byte-identical; a current folder is reused as is."""
    other = generate_cohort(tmp_path / "again", micro_cfg, seed=3)
    for name in ("cohort.csv", "truth.csv"):
        assert (micro_cohort.root / name).read_bytes() == (other.root / name).read_bytes()
    first = sorted((micro_cohort.root / "slides").iterdir())
    assert [p.name for p in first] == [p.name for p in sorted((other.root / "slides").iterdir())]
    assert first[0].read_bytes() == (other.root / "slides" / first[0].name).read_bytes()
    mtime = first[0].stat().st_mtime_ns
    generate_cohort(micro_cohort.root, micro_cfg, seed=3)
    assert first[0].stat().st_mtime_ns == mtime  # reused, not rewritten
    assert settings_key(micro_cfg, 3) != settings_key(micro_cfg, 4)
    micro_cfg.n_patients = 12
    assert settings_key(micro_cfg, 3) != settings_key(micro_config(), 3)


def test_labels_are_balanced_and_csvs_consistent(micro_cohort):
    cohort = pd.read_csv(micro_cohort.cohort_csv)
    manifest = pd.read_csv(micro_cohort.manifest_csv)
    assert list(cohort.columns) == [
        "slide_id",
        "patient_id",
        "subtype",
        "stage",
        "response",
        "time",
        "event",
    ]
    assert set(manifest["slide_id"]) == set(cohort["slide_id"])
    patients = cohort.drop_duplicates("patient_id")
    assert patients["subtype"].value_counts().tolist() == [4, 4]
    assert patients["stage"].value_counts().tolist() == [2, 2, 2, 2]
    assert patients["response"].value_counts().tolist() == [4, 4]


def _cell_measures(path, cell_level_px: int, level: int):
    """Per layout cell, from the pixels alone: is it tissue, and its nuclei-dense score."""
    with open_slide(path) as reader:
        w, h = reader.level_dimensions[level]
        img = reader.read_region(0, 0, level, w, h)
    rows, cols = h // cell_level_px, w // cell_level_px
    cells = img[: rows * cell_level_px, : cols * cell_level_px]
    cells = cells.reshape(rows, cell_level_px, cols, cell_level_px, 3).swapaxes(1, 2)
    cells = cells.reshape(rows * cols, cell_level_px, cell_level_px, 3)
    tissue = (saturation_unit(cells) > 0.08).mean(axis=(1, 2)) > 0.2
    return tissue.reshape(rows, cols), dense_score(cells).reshape(rows, cols)


def test_planted_phenotype_is_in_the_pixels(micro_cohort):
    """Extent (stage), dense share (subtype) and how the dense share differs between the two
    regions (response), measured on the pixels of every slide at 2 µm/px (64-µm cells of
    32 px), match the planted values."""
    truth = pd.read_csv(micro_cohort.truth_csv).set_index("patient_id")
    cohort = pd.read_csv(micro_cohort.cohort_csv)
    for row in cohort.itertuples(index=False):
        t = truth.loc[row.patient_id]
        with open_slide(slide_path(micro_cohort, row.slide_id)) as reader:
            mpp = reader.mpp
        level = 1 if mpp > 0.4 else 2  # 2 µm/px: ds 4 of 0.5 µm/px, ds 8 of 0.25 µm/px
        tissue, score = _cell_measures(slide_path(micro_cohort, row.slide_id), 32, level)
        assert abs(tissue.mean() - t.extent) < 0.04, row.slide_id
        dense = tissue & (score > 0.4)
        share = dense.sum() / tissue.sum()
        lo, hi = SHARE_RANGE[row.subtype]
        assert lo - 0.08 < share < hi + 0.08, (row.slide_id, share)
        layout = np.where(tissue, np.where(dense, DENSE, 2), 0)
        spread = layout_stats(layout)["region_spread"]  # regions of 32 x 32 cells
        if row.response == "responder":  # focal: one region holds most dense cells
            assert spread > 0.15, (row.slide_id, spread)
        else:  # diffuse: the same share everywhere
            assert spread < 0.08, (row.slide_id, spread)


def test_layout_rules_exact():
    """The layout has exactly the asked extent and share; arrangement changes only how the
    share differs between regions."""
    rng = np.random.default_rng(0)
    stats = {}
    for arrangement in ("focal", "diffuse"):
        layout = slide_layout(32, 64, 0.6, 0.3, arrangement, rng)
        stats[arrangement] = layout_stats(layout)
        assert stats[arrangement]["extent"] == pytest.approx(0.6, abs=1e-3)
        assert stats[arrangement]["dense_share"] == pytest.approx(0.3, abs=2e-3)
    assert stats["focal"]["region_spread"] > 0.25 > 0.02 > stats["diffuse"]["region_spread"]
    with pytest.raises(ValueError, match="arrangement"):
        slide_layout(4, 4, 0.5, 0.5, "striped", rng)


def test_survival_follows_the_hazard_with_censoring():
    """Higher planted risk -> shorter times (concordance of the true risk >= 0.75); 20-50 %
    censored; every observed time is min(true time, follow-up)."""
    from lifelines.utils import concordance_index

    p = draw_patients(400, np.random.default_rng(1))
    censored = 1 - p["event"].mean()
    assert 0.2 < censored < 0.5
    assert np.allclose(p["time"], np.minimum(p["true_time"], p["follow_up"]).round(2))
    assert concordance_index(p["time"], -p["risk"], p["event"]) > 0.75
    stage_index = p["stage"].map({s: i for i, s in enumerate(EXTENT)})
    assert np.allclose(p["risk"], risk_score(p["dense_share"], stage_index))
