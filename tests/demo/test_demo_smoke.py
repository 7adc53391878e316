"""The whole chain, for real, on the micro cohort: every stage runs, then a rerun skips them all.

Tiny everything (8 patients, one region each, a few DINO steps, 2 folds, one task): this proves
that the stages fit together through their files, not that the models learn (the slow test
does, on the full demo).
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
from demo_utils import MICRO

TINY = [
    "tasks=[subtype]",
    "controls=false",
    "heatmap_slides=1",
    "run_models=[hipt_lgp]",
    "stages.pretrain_256=[trainer.max_steps=4,data.batch_size=4,data.num_workers=0]",
    "stages.pretrain_4k=[trainer.max_steps=4,data.batch_size=4]",
    "stages.finetune=[split.n_folds=2,split.val_fraction=0,train.max_epochs=2]",
    "stages.heatmap=['heads256=[0]','heads4k=[0]',progress=false,min_canvas_side=256]",
    "wandb.mode=disabled",
    "external=false",
]


def _micro(root) -> list[str]:  # noqa: ANN001
    return [
        f"out={root}",
        "seed=3",
        f"cohort.n_patients={MICRO.n_patients}",
        "cohort.slides_per_patient=[1,1]",
        "cohort.regions=[1,2]",
        f"cohort.fine_mpp_every={MICRO.fine_mpp_every}",
        "cohort.include_sample=false",
    ]


def test_chain_runs_then_skips(micro_cohort, tmp_path, capsys):
    from pipelines.demo import main

    root = tmp_path / "demo"
    shutil.copytree(micro_cohort.root, root / "cohort")
    assert main([*_micro(root), *TINY]) == 0
    report = capsys.readouterr().out
    assert "| subtype | AUROC | 2 |" in report
    for folder in ("tile", "pretrain_256", "features", "pretrain_4k", "finetune/hipt_lgp/subtype"):
        assert json.loads((root / folder / "run.json").read_text())["config_hash"]
    assert any((root / "heatmaps").glob("*/index.html"))
    t0 = time.perf_counter()
    assert main([*_micro(root), *TINY]) == 0
    assert time.perf_counter() - t0 < 15
    report = capsys.readouterr().out
    for stage in ("tile", "pretrain-256", "extract", "pretrain-4k", "finetune", "heatmap"):
        assert f"| {stage} | 0 ran, " in report


@pytest.mark.slow
def test_full_demo_meets_targets(tmp_path, capsys):
    """`make demo` as shipped: the headline model (HIPT) reaches subtype AUROC >= 0.9 and
    survival C >= 0.7; its shuffled-label controls (3 permutations x 4 folds pooled) stay within
    0.15 of chance (0.5; each test fold holds 9 patients)."""
    import pandas as pd
    from pipelines.demo import main

    from hipt.demo.report import fold_stat

    assert main([f"out={tmp_path / 'demo'}"]) == 0
    root = tmp_path / "demo" / "finetune" / "hipt_lgp"

    def mean(task: str, metric: str) -> float:
        table = pd.read_csv(root / task / "summary.csv", dtype={"fold": str})
        return float(table.set_index("fold").loc["mean", metric])

    assert mean("subtype", "auroc") >= 0.9
    assert mean("survival", "c_index") >= 0.7
    # External validation: the fold models' ensemble on an independent cohort (issue 13).
    ext = tmp_path / "demo" / "external" / "predict"
    for task, metric, floor in (("subtype", "auroc", 0.9), ("survival", "c_index", 0.7)):
        table = pd.read_csv(ext / task / "metrics.csv").query("model == 'ensemble'")
        assert table.set_index("metric").loc[metric, "value"] >= floor, (task, table)
    for task, metric in (("subtype", "auroc"), ("survival", "c_index"), ("stage", "auroc")):
        controls = sorted(root.glob(f"{task}-shuffled-*/summary.csv"))
        control, _, n = fold_stat(controls, metric)
        assert len(controls) == 3 and n == 12
        assert abs(control - 0.5) <= 0.15, (task, control)
