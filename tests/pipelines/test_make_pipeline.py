"""`make pipeline` on a generated cohort: every stage in dependency order, skip, rerun, dry run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from pipeline_settings import TINY_PIPELINE

from hipt.demo.cohort import CohortConfig, CohortFiles, generate_cohort
from hipt.features.store import read_meta
from hipt.provenance import sha256_file

TINY = [
    "TASKS=subtype,survival",
    "MODEL256=timm:test_vit",  # any patch encoder: timm's 64-d test ViT, 160-px inputs
    *TINY_PIPELINE,
    "finetune_tasks.survival.target.n_bins=2",
    "predict.bootstrap=200",
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> CohortFiles:
    """8 synthetic patients of real tissue, one 1-region slide each (2 at 0.25 µm/px)."""
    settings = CohortConfig(n_patients=8, slides_per_patient=[1, 1], regions=[1, 1],
                            fine_mpp_every=4, include_sample=False)  # fmt: skip
    return generate_cohort(tmp_path_factory.mktemp("pipe") / "cohort", settings, seed=5)


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> CohortFiles:
    """6 other patients (another seed), for the external-cohort predictions."""
    settings = CohortConfig(n_patients=6, slides_per_patient=[1, 1], regions=[1, 1],
                            fine_mpp_every=0, include_sample=False)  # fmt: skip
    return generate_cohort(tmp_path_factory.mktemp("ext") / "cohort", settings, seed=6)


@pytest.fixture(scope="module")
def vit256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init patch encoder of another width (timm's 64-d test ViT) in our export
    format, standing in for published weights: the width flows from the stores."""
    import torch

    from hipt.models import build, export_model

    torch.manual_seed(0)
    return export_model(build("timm:test_vit"), tmp_path_factory.mktemp("w") / "vit256")


def pipeline(cohort: CohortFiles, out: Path, ckpt: Path, *extra: str) -> int:
    from pipelines.pipeline import main

    ext = EXTERNAL.get(out, [])  # a run keeps its external cohort (it is part of the plan)
    return main([f"SLIDES={cohort.manifest_csv}", f"COHORT={cohort.cohort_csv}", f"OUT={out}",
                 f"CHECKPOINT256={ckpt}", *TINY, *ext, *extra])  # fmt: skip


EXTERNAL: dict[Path, list[str]] = {}


def records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "provenance").glob("*.json")}


@pytest.fixture(scope="module")
def first_run(cohort, external, vit256, tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """The first run, with an external cohort."""
    out = tmp_path_factory.mktemp("run") / "out"
    EXTERNAL[out] = [f"EXTERNAL_SLIDES={external.manifest_csv}",
                     f"EXTERNAL_COHORT={external.cohort_csv}"]  # fmt: skip
    assert pipeline(cohort, out, vit256) == 0
    return out, records(out)


def test_every_stage_runs_in_dependency_order_and_stores_carry_the_new_vit4k(first_run, capsys):
    """tile -> extract -> pretrain-4k -> encode-4k -> finetune x2 -> 2 heatmaps per task; every
    store's feats4k ends made by the pretrained ViT-4K (not the random one of extraction time),
    and the finetune runs required exactly that ViT-4K."""
    out, recs = first_run
    steps = ["tile", "extract", "pretrain_4k", "encode_4k", "finetune_subtype", "finetune_survival"]
    assert all(recs[s]["status"] == "done" for s in steps)
    assert recs["encode_4k"]["upstream"].keys() == {"extract", "pretrain_4k"}
    backbone = out / "pretrain_4k" / "backbone.safetensors"
    sha = sha256_file(backbone)
    for store in (out / "features").glob("*.zarr"):
        assert read_meta(store).checkpoint_4k_sha256 == sha  # type: ignore[union-attr]
    assert f"expect_checkpoint_4k={backbone}" in recs["finetune_subtype"]["argv"]
    for task in ("subtype", "survival"):
        drawn = sorted((out / "heatmaps" / task).glob("*/index.html"))
        assert len(drawn) == 2, drawn  # the highest- and the lowest-scored patient
    for task in ("subtype", "survival"):  # the external cohort: after its task's finetune
        assert recs[f"predict_{task}"]["upstream"].keys() >= {"external_extract",
                                                              f"finetune_{task}"}  # fmt: skip
        preds = (out / "external" / "predict" / task / "predictions.csv").read_text()
        assert len(preds.splitlines()) == 1 + 6
    ext_store = next((out / "external" / "features").glob("*.zarr"))
    assert read_meta(ext_store).checkpoint_4k_sha256 == sha  # type: ignore[union-attr]
    report = (out / "report.md").read_text()
    assert "## subtype: external cohort" in report
    _check_width(out, "timm:test_vit", 64, 160, 10)
    assert "## subtype: test-fold metrics" in report and "auroc" in report
    assert "## survival: test-fold metrics" in report and "c_index" in report


def test_second_run_skips_every_step(first_run, cohort, vit256):
    """Rerun with the same arguments: no stage runs, no record changes."""
    out, recs = first_run
    assert pipeline(cohort, out, vit256) == 0
    again = records(out)
    assert {k: v.get("digest") for k, v in again.items()} == {
        k: v.get("digest") for k, v in recs.items()
    }
    timing = (out / "report.md").read_text().split("## Step wall times")[1]
    assert "| skipped |" in timing and "| ran |" not in timing


def test_changed_finetune_setting_reruns_only_finetune_and_below(first_run, cohort, vit256,
                                                                 capsys):  # fmt: skip
    """dry_run first says what will run and why; then only finetune of that task and its
    heatmaps rerun; tile, extraction, pretraining and the other task keep their outputs."""
    out, recs = first_run
    change = "finetune_tasks.subtype.train.max_epochs=3"
    assert pipeline(cohort, out, vit256, change, "dry_run=true") == 0
    plan = capsys.readouterr().out
    lines = {line.split()[0]: line for line in plan.splitlines()[2:] if line.strip()}
    for step in ("tile", "extract", "pretrain_4k", "encode_4k", "finetune_survival"):
        assert " skip " in lines[step], lines[step]
    assert "run" in lines["finetune_subtype"] and "settings changed" in lines["finetune_subtype"]
    assert records(out) == recs  # nothing ran

    assert pipeline(cohort, out, vit256, change) == 0
    now = records(out)
    for step in ("tile", "extract", "pretrain_4k", "encode_4k", "finetune_survival"):
        assert now[step]["digest"] == recs[step]["digest"], step
    assert now["finetune_subtype"]["digest"] != recs["finetune_subtype"]["digest"]


def test_report_html_loads_in_a_real_browser(first_run):
    """report.html in Chromium: every image (plots, heatmap overlays) loads, every link (the
    heatmap pages) resolves, no console error."""
    from browser import check_pages, chromium

    chromium()
    out, _ = first_run
    assert check_pages(out, ["report.html"]) == {"report.html": []}


def test_missing_checkpoint_is_one_line_before_anything_runs(cohort, tmp_path, capfd):
    """PRETRAIN=none without CHECKPOINT4K: exit 2 naming what to pass; no folder written."""
    from pipelines.pipeline import main

    code = main([f"SLIDES={cohort.manifest_csv}", f"COHORT={cohort.cohort_csv}",
                 f"OUT={tmp_path / 'x'}", "PRETRAIN=none", "wandb.mode=disabled"])  # fmt: skip
    assert code == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs CHECKPOINT256=<weights file>" in err[0]
    assert not (tmp_path / "x").exists()


def test_slurm_script_hands_the_pipeline_valid_settings(cohort, vit256, tmp_path):
    """scripts/slurm/pipeline.sbatch run as SLURM would on a 2-node x 4-GPU allocation (here with
    dry_run=true, no srun needed): its settings are accepted and the plan holds every step."""
    import os
    import subprocess

    repo = Path(__file__).parents[2]
    env = {**os.environ, "PY": sys.executable, "SLURM_JOB_NUM_NODES": "2",
           "SLURM_NTASKS_PER_NODE": "4",
           "HIPT_ARGS": "dry_run=true wandb.mode=disabled"}  # fmt: skip
    cmd = ["bash", "scripts/slurm/pipeline.sbatch", str(cohort.manifest_csv),
           str(cohort.cohort_csv), str(tmp_path / "out"), "subtype", str(vit256)]  # fmt: skip
    res = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    plan = [line.split()[:2] for line in res.stdout.splitlines()[2:] if line.strip()]
    assert plan[:5] == [["tile", "run"], ["extract", "run"], ["pretrain_4k", "run"],
                        ["encode_4k", "run"], ["finetune_subtype", "run"]]  # fmt: skip
    assert not (tmp_path / "out" / "provenance").exists()  # a dry run writes nothing


def test_edited_cohort_reruns_finetuning_only(first_run, cohort, vit256, capsys):
    """The cohort CSV's content is an input: after an edit (here a new column), the dry run
    shows both finetunes rerunning because of it, and nothing above them."""
    out, _ = first_run
    original = cohort.cohort_csv.read_text()
    try:
        lines = original.splitlines()
        edited = [lines[0] + ",site"] + [row + ",A" for row in lines[1:]]
        cohort.cohort_csv.write_text("\n".join(edited) + "\n")
        assert pipeline(cohort, out, vit256, "dry_run=true") == 0
    finally:
        cohort.cohort_csv.write_text(original)
    plan = capsys.readouterr().out
    rows = {line.split()[0]: line for line in plan.splitlines()[2:] if line.strip()}
    for step in ("tile", "extract", "pretrain_4k", "encode_4k"):
        assert " skip " in rows[step], rows[step]
    for step in ("finetune_subtype", "finetune_survival"):
        assert "upstream changed: cohort" in rows[step], rows[step]


def test_an_unreadable_slide_is_skipped_reported_and_the_rest_goes_on(external, tmp_path):
    """A slide folder holding one corrupt file: tiling skips it, every later step runs on the
    others, the report names it, and the exit code is 1 now and on a rerun (which runs nothing).
    Extraction starts through a recording launcher prefix, as `launcher=srun` would start it;
    the other steps run in this process."""
    import shutil

    import torch
    from pipelines.pipeline import main

    from hipt.models import build, export_model

    slides = tmp_path / "slides"
    shutil.copytree(external.root / "slides", slides)
    (slides / "broken.svs").write_bytes(b"II*\x00" + b"\x00" * 4096)
    torch.manual_seed(0)
    ckpts = {k: export_model(build(f"vit{k}_tiny_test"), tmp_path / f"vit{k}")
             for k in ("256", "4k")}  # fmt: skip
    args = [f"SLIDES={slides}", f"COHORT={external.cohort_csv}", f"OUT={tmp_path / 'out'}",
            "TASKS=subtype", f"CHECKPOINT256={ckpts['256']}", f"CHECKPOINT4K={ckpts['4k']}",
            "heatmaps=0", "extract.model_256=vit256_tiny_test",
            *[a for a in TINY if a.startswith(("extract.", "finetune.", "wandb"))]]  # fmt: skip
    log = tmp_path / "launched.txt"
    recorder = Path(__file__).parents[1] / "support" / "launch_recorder.py"
    assert main([*args, f"launcher={sys.executable} {recorder} {log}"]) == 1
    assert log.read_text().split() == ["pipelines.extract_features"]
    tile = json.loads((tmp_path / "out" / "tile" / "summary.json").read_text())
    assert [f["slide_id"] for f in tile["failed"]] == ["broken"]
    assert "no image directory" in tile["failed"][0]["error"]
    assert (tmp_path / "out" / "finetune" / "subtype" / "summary.csv").is_file()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "tile: broken:" in report
    before = records(tmp_path / "out")
    assert main(args) == 1
    assert records(tmp_path / "out") == before


def _check_width(out: Path, arch: str, width: int, px: int, tokens: int) -> None:
    """The patch encoder's width D flows from the stores: every store (cohort and external)
    records the encoder, D and its input side; the pretrained ViT-4K reads D-d grids
    (card input_dim), each fold's HIPT model too (grid_dim); heatmaps draw the token maps on
    the encoder's own token grid."""
    from hipt.models import read_card

    stores = sorted(out.glob("**/*.zarr"))
    assert stores
    for path in stores:
        meta = read_meta(path)
        assert meta is not None
        assert (meta.model_256, meta.feature_dim_256, meta.input_px_256) == (arch, width, px)
        assert meta.norm_256.endswith("resize=bilinear-antialias") and meta.stain == "none"
    assert read_card(out / "pretrain_4k" / "backbone.safetensors").kwargs["input_dim"] == width
    for fold in out.glob("finetune/*/fold_*/model.safetensors"):
        assert read_card(fold).kwargs["grid_dim"] == width
    summaries = list(out.glob("heatmaps/*/*/summary.json"))
    assert summaries
    for summary in summaries:
        assert json.loads(summary.read_text())["tokens_per_patch"] == tokens
