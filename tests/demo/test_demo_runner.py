"""The demo runner's provenance-based skipping, rerun propagation and failure handling.

Stages are replaced by a fake launcher that writes each stage's completion marker and
``run.json``, so these tests check the orchestration alone in seconds.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from demo_utils import MICRO

from hipt.config import load_config
from hipt.demo.config import DemoConfig
from hipt.demo.runner import StageFailed
from hipt.demo.runner import run_demo as _run_demo

DONE = {
    "tile": "regions.parquet",
    "pretrain": "backbone.safetensors",
    "extract_features": "summary.json",
    "encode_4k": "summary.json",
    "finetune": "summary.csv",
    "heatmap": "index.html",
    "predict": "summary.json",
}


def run_demo(cfg: DemoConfig, fake: FakeStages) -> int:
    """The demo with ``fake`` stages; finetune steps run 2 at a time in threads (the fake
    records into this process's memory, so worker processes would not do)."""
    return _run_demo(cfg, fake, ThreadPoolExecutor)


class FakeStages:
    """Records ``(module, out)`` of every launch and writes what the real stage would mark
    (``run.json`` differs on every run, as the real one holds its creation time)."""

    runs = 0

    def __init__(self, fail: str | None = None, code: int = 1) -> None:
        self.calls: list[tuple[str, str]] = []
        self.argv: list[list[str]] = []
        self.fail, self.code = fail, code

    def __call__(self, module: str, argv: list[str]) -> int:
        args = dict(a.split("=", 1) for a in argv)
        out = Path(args["out"])
        self.calls.append((module, out.name))
        self.argv.append(argv)
        if self.fail and self.fail in str(out):
            return self.code
        out.mkdir(parents=True, exist_ok=True)
        (out / DONE[module]).write_text("done")
        FakeStages.runs += 1
        (out / "run.json").write_text(json.dumps({"argv": argv, "run": FakeStages.runs}))
        return 0


def _cfg(root: Path, *overrides: str) -> DemoConfig:
    micro = [
        f"cohort.{k}={getattr(MICRO, k)}"
        for k in ("n_patients", "fine_mpp_every", "include_sample")
    ]
    micro += ["cohort.slides_per_patient=[1,1]", "cohort.regions=[1,2]", "seed=3", "external=false"]
    return load_config(DemoConfig, "demo.yaml", [f"out={root}", *micro, *overrides])


@pytest.fixture()
def demo_root(tmp_path, micro_cohort) -> Path:
    """A demo folder that already holds the (current) micro cohort."""
    shutil.copytree(micro_cohort.root, tmp_path / "demo" / "cohort")
    return tmp_path / "demo"


def test_second_run_skips_everything_and_changes_rerun_downstream(demo_root):
    """Run 1 launches every stage in pipeline order; run 2 launches nothing; a changed
    pretrain-4k setting reruns pretrain-4k and what reads it, not tile/pretrain-256/extract."""
    fake = FakeStages()
    assert run_demo(_cfg(demo_root), fake) == 0
    modules = [m for m, _ in fake.calls]
    assert modules[:5] == ["tile", "pretrain", "extract_features", "pretrain", "encode_4k"]
    n_finetune = (1 + 3) * 4 + 4  # headline model + 3 shuffled-label controls, abmil without
    assert modules[5:] == ["finetune"] * n_finetune + ["heatmap"] * 2
    assert all("wandb.group=demo-" in " ".join(a) for a in fake.argv)
    report = (demo_root / "report.md").read_text()
    assert "| tile | 1 ran, 0 up to date |" in report

    again = FakeStages()
    assert run_demo(_cfg(demo_root), again) == 0
    assert again.calls == []
    assert "| tile | 0 ran, 1 up to date |" in (demo_root / "report.md").read_text()

    changed = FakeStages()
    assert run_demo(_cfg(demo_root, "stages.pretrain_4k=[trainer.max_steps=7]"), changed) == 0
    modules = [m for m, _ in changed.calls]
    assert modules[:2] == ["pretrain", "encode_4k"] and changed.calls[0][1] == "pretrain_4k"
    assert "tile" not in modules and "extract_features" not in modules
    assert modules.count("finetune") == n_finetune and modules.count("heatmap") == 2


def test_failed_stage_stops_with_its_code_and_keeps_finished_ones(demo_root):
    """A stage's exit code becomes the demo's; stages before it are not rerun next time."""
    with pytest.raises(StageFailed, match="extract.*exit code 3") as err:
        run_demo(_cfg(demo_root), FakeStages(fail="features", code=3))
    assert err.value.exit_code == 3
    record = json.loads((demo_root / "provenance" / "extract.json").read_text())
    assert record["status"] == "failed"
    fixed = FakeStages()
    run_demo(_cfg(demo_root), fixed)
    assert fixed.calls[0] == ("extract_features", "features")


def test_interrupted_pretrain_resumes_and_edited_output_reruns(demo_root):
    """A pretrain step left 'running' with a checkpoint resumes; an output whose run.json
    changed behind the demo's back is not trusted."""
    run_demo(_cfg(demo_root), FakeStages())
    prov = demo_root / "provenance" / "pretrain_4k.json"
    record = json.loads(prov.read_text())
    prov.write_text(json.dumps({**record, "status": "running"}))
    (demo_root / "pretrain_4k" / "backbone.safetensors").unlink()
    (demo_root / "pretrain_4k" / "checkpoints").mkdir()
    (demo_root / "pretrain_4k" / "checkpoints" / "last.ckpt").write_text("ckpt")
    (demo_root / "tile" / "run.json").write_text("{}")
    fake = FakeStages()
    run_demo(_cfg(demo_root), fake)
    assert fake.calls[0] == ("tile", "tile")
    resumed = [a for a in fake.argv if "out=" + str(demo_root / "pretrain_4k") in a]
    assert resumed and "overwrite=true" in resumed[0]  # upstream changed: key differs, restart

    prov.write_text(json.dumps({**json.loads(prov.read_text()), "status": "running"}))
    (demo_root / "pretrain_4k" / "backbone.safetensors").unlink()
    fake = FakeStages()
    run_demo(_cfg(demo_root), fake)
    assert fake.argv[0][-4] == "resume=true"


def _finetune_outs(fake: FakeStages) -> set[str]:
    """``<model>/<task>`` of every finetune run the fake saw."""
    outs = [dict(a.split("=", 1) for a in argv)["out"] for argv in fake.argv]
    return {"/".join(Path(o).parts[-2:]) for o in outs if "finetune" in Path(o).parts}


def test_parallel_finetune_failure_records_the_others_and_reruns_only_what_is_missing(demo_root):
    """With jobs=2, one failing finetune run stops the demo with its code, before the
    heatmaps; every run that finished is recorded and is not run again next time."""
    failing = FakeStages(fail="stage-shuffled-2", code=4)
    with pytest.raises(StageFailed, match="finetune_hipt_lgp_stage_shuffled_2.*exit code 4"):
        run_demo(_cfg(demo_root), failing)
    assert "heatmap" not in [m for m, _ in failing.calls]
    finished = _finetune_outs(failing) - {"hipt_lgp/stage-shuffled-2"}
    assert finished  # the others before (and beside) the failure were kept
    again = FakeStages()
    assert run_demo(_cfg(demo_root), again) == 0
    rerun = _finetune_outs(again)
    assert "hipt_lgp/stage-shuffled-2" in rerun and not rerun & finished
    assert len(rerun | finished) == 20
    assert [m for m, _ in again.calls][-2:] == ["heatmap", "heatmap"]
    assert "finetune: " in (demo_root / "report.md").read_text()  # the side-by-side note


def test_new_cohort_removes_what_the_old_one_made(demo_root):
    """Other cohort settings: the stage folders of the old cohort go before anything reruns,
    so no store of a slide the new cohort lacks can reach pretrain-4k (which refuses a folder
    that mixes extractions); files outside the stage folders stay."""
    assert run_demo(_cfg(demo_root), FakeStages()) == 0
    orphan = demo_root / "features" / "DEMO-999-S0.zarr"
    orphan.mkdir(parents=True)
    mine = demo_root / "notes.txt"
    mine.write_text("kept")
    fake = FakeStages()
    assert run_demo(_cfg(demo_root, "cohort.n_patients=9"), fake) == 0
    assert not orphan.exists() and mine.read_text() == "kept"
    assert [m for m, _ in fake.calls][:4] == ["tile", "pretrain", "extract_features", "pretrain"]
    record = json.loads((demo_root / "provenance" / "tile.json").read_text())
    assert record["status"] == "done"


def test_the_external_cohort_is_tiled_extracted_and_predicted_after_finetune(demo_root):
    """external=true: an independent cohort (seed + 1) is generated, tiled and extracted with
    the demo's encoders, then predicted per task with the headline model's fold models; a rerun
    launches nothing, and another external seed reruns the external steps alone."""
    cfg = _cfg(demo_root, *_extra())
    fake = FakeStages()
    assert run_demo(cfg, fake) == 0
    order = [(m, o) for m, o in fake.calls]
    ext = order.index(("tile", "tile"), 1)  # the external cohort's tile step
    assert order[ext : ext + 4] == [("tile", "tile"), ("extract_features", "features"),
                                    ("predict", "subtype"), ("predict", "survival")]  # fmt: skip
    assert max(i for i, (m, _) in enumerate(order) if m == "finetune") < ext
    predict = next(a for a in fake.argv if any(x.startswith("bootstrap=") for x in a))
    args = dict(a.split("=", 1) for a in predict)
    assert args["model"].endswith("finetune/hipt_lgp/subtype")
    assert "external/cohort/cohort.csv" in args["cohort"]
    info = json.loads((demo_root / "external" / "cohort" / "cohort.json").read_text())
    assert info["seed"] == 4 and info["n_slides"] == 8  # seed 3 + 1, no sample slide
    again = FakeStages()
    assert run_demo(cfg, again) == 0 and again.calls == []
    other = FakeStages()
    assert run_demo(_cfg(demo_root, *_extra(), "external_seed=11"), other) == 0
    assert {m for m, _ in other.calls} == {"tile", "extract_features", "predict"}


def _extra() -> list[str]:
    return ["external=true", "tasks=[subtype,survival]", "controls=false",
            "run_models=[hipt_lgp]", "external_bootstrap=10"]  # fmt: skip
