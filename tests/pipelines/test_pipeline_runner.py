"""The pipeline runner with its stages replaced by a launcher that writes their outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from wandb_runs import find_offline_runs, read_artifacts

from hipt.config import load_config
from hipt.pipeline.config import PipelineConfig
from hipt.pipeline.runner import PipelineRunner

DONE = {"tile": "regions.parquet", "pretrain": "backbone.safetensors", "finetune": "summary.csv"}


def fake_stage(module: str, argv: list[str]) -> int:
    """Writes the stage's completion file and a run.json that differs on every run."""
    args = dict(a.split("=", 1) for a in argv)
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / DONE.get(module, "summary.json")).write_text("done")
    fake_stage.runs += 1  # type: ignore[attr-defined]
    (out / "run.json").write_text(json.dumps([argv, fake_stage.runs]))  # type: ignore[attr-defined]
    return 0


fake_stage.runs = 0  # type: ignore[attr-defined]


def _cfg(tmp_path: Path, *extra: str) -> PipelineConfig:
    (tmp_path / "slides").mkdir(exist_ok=True)
    (tmp_path / "slides" / "a.svs").write_bytes(b"x")
    (tmp_path / "cohort.csv").write_text("slide_id,patient_id\na,p\n")
    return load_config(PipelineConfig, "pipeline.yaml", [
        f"slides={tmp_path / 'slides'}", f"cohort={tmp_path / 'cohort.csv'}",
        f"out={tmp_path / 'out'}", "pretrain=4k", f"checkpoint256={tmp_path / 'cohort.csv'}",
        *extra])  # fmt: skip


def test_killed_run_continues_where_it_stopped(tmp_path):
    """Killed while pretrain-4k runs (Ctrl-C in the stage): the rerun skips tile and extract,
    runs pretrain-4k again and everything after it."""
    cfg = _cfg(tmp_path, "wandb.mode=disabled")
    calls: list[str] = []

    def killed_at_pretrain(module: str, argv: list[str]) -> int:
        calls.append(module)
        if module == "pretrain":
            raise KeyboardInterrupt
        return fake_stage(module, argv)

    runner = PipelineRunner(cfg, killed_at_pretrain)
    with pytest.raises(KeyboardInterrupt):
        for step in runner.ordered():
            runner.run_step(step, runner.wandb)
    assert calls == ["tile", "extract_features", "pretrain"]
    assert runner.record("pretrain_4k")["status"] == "running"

    calls.clear()
    runner = PipelineRunner(cfg, lambda m, a: calls.append(m) or fake_stage(m, a))
    for step in runner.ordered():
        runner.run_step(step, runner.wandb)
    assert calls == ["pretrain", "encode_4k", "finetune"]


def test_pipeline_steps_record_their_artifacts_and_inputs(tmp_path, monkeypatch):
    """Through the pipeline runner (stages replaced by a launcher that writes their outputs):
    each finished step's provenance record names the artifacts it logged and the ones it read
    (extract read tiles; encode-4k read both stores and the pretrained ViT-4K)."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = _cfg(tmp_path, "wandb.mode=offline", "wandb.group=grp")
    runner = PipelineRunner(cfg, fake_stage)
    for step in runner.ordered()[:4]:  # tile, extract, pretrain_4k, encode_4k
        runner.run_step(step, runner.wandb)
    rec = {name: runner.record(name)["wandb"] for name in ("tile", "extract", "encode_4k")}
    assert rec["tile"] == {"artifacts": ["grp-tiles"], "uses": [], "mode": "offline"}
    assert rec["extract"]["artifacts"] == ["grp-feats256"] and rec["extract"]["uses"] == [
        "grp-tiles"]  # fmt: skip
    assert rec["encode_4k"]["uses"] == ["grp-feats256", "grp-vit4k"]
    (run_dir,) = find_offline_runs(tmp_path / "out" / "features" / "encode_4k")
    assert [a["name"] for a in read_artifacts(run_dir)] == ["grp-feats4k"]


def test_tolerated_failures_go_on_and_are_counted(tmp_path):
    """A stage exiting 1 with its completion file (some slides failed) is done and counted,
    also when skipped on the next run; an optional step's failure is recorded and the run
    goes on; a failure of any other step stops the run."""
    from hipt.pipeline.engine import StageFailed, Step

    cfg = _cfg(tmp_path, "wandb.mode=disabled")

    def partial_tile(module: str, argv: list[str]) -> int:
        code = fake_stage(module, argv)
        return 1 if module == "tile" else code

    runner = PipelineRunner(cfg, partial_tile)
    tile = runner.ordered()[0]
    runner.run_step(tile, [])
    assert runner.record("tile")["status"] == "done" and runner.record("tile")["partial"]
    assert len(runner.problems) == 1
    again = PipelineRunner(cfg, partial_tile)
    again.run_step(again.ordered()[0], [])  # up to date, still partial
    assert again.problems == runner.problems

    out = tmp_path / "h"
    optional = Step("heatmap_x", "heatmap", "heatmap", [f"out={out}"], out, "index.html",
                    tolerate="optional")  # fmt: skip
    runner.run_step(optional, [])  # writes summary.json, not index.html: failed
    assert runner.record("heatmap_x")["status"] == "failed" and len(runner.problems) == 2
    strict = Step("heatmap_y", "heatmap", "heatmap", [f"out={out}"], out, "index.html")
    with pytest.raises(StageFailed, match="heatmap_y"):
        runner.run_step(strict, [])
