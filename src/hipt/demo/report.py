"""The demo's closing report: test-fold metrics vs shuffled-label controls, times, pictures."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from hipt.io import atomic_write_text
from hipt.pipeline.engine import StepTiming

if TYPE_CHECKING:
    from hipt.demo.steps import Plan

#: Headline metric of each task, its display name and the target the demo should reach.
HEADLINE = {
    "subtype": ("auroc", "AUROC", 0.9),
    "stage": ("auroc", "AUROC (macro OvR)", None),
    "survival": ("c_index", "C-index", 0.7),
    "response": ("auroc", "AUROC", None),
}
SECONDARY = {"stage": ("qwk", "QWK"), "subtype": ("balanced_accuracy", "bal. acc.")}
STAGE_ORDER = (
    "cohort",
    "tile",
    "pretrain-256",
    "extract",
    "pretrain-4k",
    "encode-4k",
    "finetune",
    "external",
    "predict",
    "heatmap",
)
PLOTS = ("roc.png", "confusion.png", "km.png")
CONTROL = "shuffled-label control (permutations x folds)"


def fold_values(summary_csv: Path, metric: str) -> list[float]:
    """Test-fold values of ``metric`` in a finetune ``summary.csv`` (empty when absent)."""
    table = pd.read_csv(summary_csv, dtype={"fold": str})
    if metric not in table.columns:
        return []
    folds = table[~table["fold"].isin(["mean", "std"])]
    return [float(v) for v in pd.to_numeric(folds[metric], errors="coerce").dropna()]


def fold_stat(summaries: Sequence[Path], metric: str) -> tuple[float, float, int]:
    """``(mean, std, n)`` of ``metric`` over the test folds of one or more ``summary.csv``.

    Several summaries (the shuffled-label repeats) are pooled: ``n`` counts every fold.
    """
    values = [v for path in summaries if path.is_file() for v in fold_values(path, metric)]
    if not values:
        return math.nan, math.nan, 0
    std = float(pd.Series(values).std(ddof=1)) if len(values) > 1 else math.nan
    return float(sum(values) / len(values)), std, len(values)


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if not math.isnan(std) else f"{mean:.3f}"


def results_rows(root: Path, tasks: list[str], models: list[str]) -> list[dict[str, str]]:
    """One row per task (and secondary metric): each model's and the control's mean ± std.

    ``models[0]`` is the headline model: its control (shuffled labels) and the target check
    are reported; the other models get a column each.
    """
    rows = []
    head = models[0]
    for task in tasks:
        metrics = [HEADLINE[task]]
        if task in SECONDARY:
            metrics.append((*SECONDARY[task], None))
        for key, label, target in metrics:
            folder = root / "finetune" / head / task
            if not (folder / "summary.csv").is_file():
                continue
            m, s, k = fold_stat([folder / "summary.csv"], key)
            controls = sorted((root / "finetune" / head).glob(f"{task}-shuffled-*/summary.csv"))
            cm, cs, ck = fold_stat(controls, key)
            row = {
                "task": task,
                "metric": label,
                "folds": str(k),
                head: _fmt(m, s),
                CONTROL: _fmt(cm, cs)
                + (f" ({len(controls)} x {ck // len(controls)})" if ck else ""),
                "target": "" if target is None else f">= {target}",
                "met": "" if target is None else ("yes" if m >= target else "NO"),
            }
            for other in models[1:]:
                summary = root / "finetune" / other / task / "summary.csv"
                row[other] = _fmt(*fold_stat([summary], key)[:2])
            rows.append(row)
    return rows


def external_rows(root: Path, tasks: list[str]) -> list[dict[str, str]]:
    """One row per task (and secondary metric) of the external cohort.

    The ensemble of the headline model's folds, with its patient-level bootstrap interval.
    """
    rows = []
    for task in tasks:
        folder = root / "external" / "predict" / task
        if not (folder / "metrics.csv").is_file():
            continue
        table = pd.read_csv(folder / "metrics.csv")
        ens = table[table["model"] == "ensemble"].set_index("metric")
        summary = json.loads((folder / "summary.json").read_text())
        metrics = [HEADLINE[task], *([(*SECONDARY[task], None)] if task in SECONDARY else [])]
        for key, label, target in metrics:
            if key not in ens.index:
                continue
            r = ens.loc[key]
            ci = f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
            rows.append(
                {
                    "task": task,
                    "metric": label,
                    "patients": str(int(r["n_patients"])),
                    "ensemble [95% CI]": ci,
                    "target": "" if target is None else f">= {target}",
                    "met": "" if target is None else ("yes" if r["value"] >= target else "NO"),
                    "s per patient": f"{summary['timing']['seconds_per_patient']:.3f}",
                }
            )
    return rows


def _markdown(rows: list[dict[str, str]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r.get(c, "") for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def timing_rows(
    timings: list[StepTiming], walls: Mapping[str, float] | None = None
) -> list[dict[str, str]]:
    """Per stage: steps ran/skipped, wall time now, and the time of the runs behind the outputs.

    ``walls`` gives the wall time of stages whose steps ran side by side (their step times
    add up to more).
    """
    rows = []
    walls = walls or {}
    for stage in STAGE_ORDER:
        ts = [t for t in timings if t.stage == stage]
        if not ts:
            continue
        ran = sum(t.status == "ran" for t in ts)
        rows.append(
            {
                "stage": stage,
                "steps": f"{ran} ran, {len(ts) - ran} up to date",
                "this run (s)": f"{walls.get(stage, sum(t.seconds for t in ts)):.1f}",
                "outputs made in (s)": f"{sum(t.last_run_seconds for t in ts):.1f}",
            }
        )
    return rows


def pictures(root: Path, tasks: list[str], model: str) -> list[str]:
    """Markdown bullet lines naming the plots of each task and the heatmaps drawn."""
    lines = []
    for task in tasks:
        made = [root / "finetune" / model / task / p for p in PLOTS]
        made = [p for p in made if p.is_file()]
        if made:
            lines.append(f"- {task} ({model}): " + ", ".join(f"`{p}`" for p in made))
    for index in sorted((root / "heatmaps").glob("*/index.html")):
        pngs = sorted(index.parent.glob("*.png"))
        main = next((p for p in pngs if "factor" in p.name), pngs[0] if pngs else None)
        extra = f" (e.g. `{main}`)" if main else ""
        lines.append(f"- heatmap {index.parent.name}: `{index}`{extra}")
    return lines


def _external_section(root: Path, tasks: list[str], plan: Plan) -> list[tuple[str, str]]:
    rows = external_rows(root, tasks)
    if not rows or plan.external_cohort is None:
        return []
    info = plan.external_cohort.info()
    title = (
        f"## External cohort (`make predict`: {plan.cfg.cohort.n_patients} other patients, seed "
        f"{info['seed']}, never trained on; ensemble of the {plan.cfg.headline_model} folds)"
    )
    columns = ["task", "metric", "patients", "ensemble [95% CI]", "target", "met", "s per patient"]
    return [(title, _markdown(rows, columns))]


def write_report(
    root: Path,
    plan: Plan,
    timings: list[StepTiming],
    total_s: float,
    group: str,
    walls: Mapping[str, float] | None = None,
) -> Path:
    """Write ``<root>/report.md`` and return its path (``walls``: see :func:`timing_rows`)."""
    tasks = list(plan.cfg.tasks)
    head = plan.cfg.headline_model
    models = [head, *(m for m in plan.cfg.run_models if m != head)]
    info = plan.cohort.info()
    columns = ["task", "metric", "folds", head, CONTROL, "target", "met"]
    res = _markdown(results_rows(root, tasks, models), columns + models[1:])
    tim = _markdown(
        timing_rows(timings, walls), ["stage", "steps", "this run (s)", "outputs made in (s)"]
    )
    for stage in walls or {}:
        ran = [t.seconds for t in timings if t.stage == stage and t.status == "ran"]
        tim += (
            f"\n\n{stage}: {len(ran)} runs, {plan.cfg.jobs} at a time (`jobs`); this run's "
            f"wall time above, their own times add up to {sum(ran):.1f} s."
        )
    args = "; ".join(f"{m}: {' '.join(plan.cfg.models[m])}" for m in models)
    cohort = (
        f"Cohort: {plan.cfg.cohort.n_patients} synthetic patients, {info['n_slides']} slides "
        f"(seed {info['seed']}, generator v{info['version']}, {info['censored']:.0%} "
        "censored), labels planted in the tissue (see `hipt.demo.phenotype`). "
        f"Slide models: {args}."
    )
    wandb = (
        f"Every stage logged to group `{group}` ({plan.cfg.wandb.mode}); offline runs are "
        f"under `{root}/**/wandb/offline-run-*`; upload them with `wandb sync <folder>`."
    )
    sections = [
        ("# hipt demo report", cohort),
        (
            "## Test-fold metrics (mean ± std over folds; control: labels shuffled across "
            "patients, every permutation's folds pooled)",
            res,
        ),
        *_external_section(root, tasks, plan),
        (f"## Stage wall times (total this run: {total_s:.1f} s)", tim),
        ("## Plots and heatmaps", "\n".join(pictures(root, tasks, head) or ["- none"])),
        ("## Weights & Biases", wandb),
    ]
    text = "\n\n".join(f"{title}\n\n{body}" for title, body in sections) + "\n"
    path = root / "report.md"
    atomic_write_text(path, text)
    return path
