"""``report.md`` / ``report.html`` of a pipeline run: cohort, results, heatmaps, times, provenance.

Both are written from the stages' own output files (``summary.json``, ``regions.parquet``,
``summary.csv``, plots, heatmap pages) and the step records, so a rerun that skips every step
writes the same report. Links are relative to ``OUT``: the folder can be moved or zipped.
"""

from __future__ import annotations

import json
import math
import os
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from hipt.io import atomic_write_text
from hipt.pipeline.engine import Step

if TYPE_CHECKING:
    from hipt.pipeline.runner import PipelineRunner

PLOTS = ("roc.png", "confusion.png", "km.png")
HEATMAP_PICTURE = "factorized_mean.png"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
.grid { display: flex; flex-wrap: wrap; gap: 14px; }
figure { margin: 0; width: 360px; } figure img { max-width: 100%; border: 1px solid #ccc; }
figcaption { font-size: 0.85em; } code { font-size: 0.85em; }
"""


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def cohort_summary(runner: PipelineRunner) -> dict[str, Any]:
    """Slides, patients, tissue area, regions and failures of the run's cohort."""
    plan = runner.plan
    tile = _json(plan.tiles / "summary.json")
    extract = _json(plan.features / "summary.json")
    regions = pd.read_parquet(
        plan.tiles / "regions.parquet",
        columns=["slide_id", "tissue_fraction", "region_px", "target_mpp"],
    )
    side_mm = regions["region_px"] * regions["target_mpp"] / 1000.0
    area = float((regions["tissue_fraction"] * side_mm**2).sum())
    cohort = pd.read_csv(runner.cfg.cohort, dtype=str)
    failed = [f"tile: {f['slide_id']}: {f['error']}" for f in tile.get("failed", [])]
    failed += [f"extract: {f['slide_id']}: {f['error']}" for f in extract.get("failed", [])]
    return {
        "slides": int(tile.get("totals", {}).get("slides", regions["slide_id"].nunique())),
        "slides_with_regions": int(regions["slide_id"].nunique()),
        "patients": int(cohort["patient_id"].nunique()) if "patient_id" in cohort else 0,
        "regions": len(regions),
        "tissue_mm2": round(area, 2),
        "failures": failed,
    }


def t_interval(values: pd.Series) -> tuple[float, float]:
    """95 % t-interval of the mean over folds (NaN for fewer than 2 folds)."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.975, n - 1)) * float(values.std(ddof=1)) / math.sqrt(n)
    return float(values.mean()) - half, float(values.mean()) + half


def fold_metrics(summary_csv: Path) -> list[dict[str, str]]:
    """Per metric: mean ± std over the test folds, the mean's 95 % t-interval, the range."""
    if not summary_csv.is_file():
        return []
    table = pd.read_csv(summary_csv, dtype={"fold": str})
    folds = table[~table["fold"].isin(["mean", "std"])]
    rows = []
    for col in folds.columns:
        if col in ("fold", "n_test", "runtime_s"):
            continue
        vals = pd.to_numeric(folds[col], errors="coerce").dropna()
        if vals.empty:
            continue
        std = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
        low, high = t_interval(vals)
        rows.append(
            {
                "metric": col,
                "mean ± std": f"{vals.mean():.3f} ± {std:.3f}",
                "95% CI of the mean (t)": f"[{low:.3f}, {high:.3f}]",
                "range": f"[{vals.min():.3f}, {vals.max():.3f}]",
                "folds": str(len(vals)),
            }
        )
    return rows


def external_metrics(predict_dir: Path) -> list[dict[str, str]]:
    """The fold ensemble's metrics on the external cohort, with their bootstrap intervals."""
    path = predict_dir / "metrics.csv"
    if not path.is_file():
        return []
    table = pd.read_csv(path)
    ens = table[table["model"] == "ensemble"]
    return [{"metric": str(r.metric), "patients": str(int(r.n_patients)),
             "ensemble [95% CI]": f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"}
            for r in ens.itertuples(index=False)]  # fmt: skip


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _md_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "(none)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(r[c]))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def timing_rows(runner: PipelineRunner) -> list[dict[str, str]]:
    """Per step: ran or up to date, seconds now, seconds of the run behind its outputs."""
    return [
        {
            "step": t.name,
            "stage": t.stage,
            "status": t.status,
            "this run (s)": f"{t.seconds:.1f}",
            "outputs made in (s)": f"{t.last_run_seconds:.1f}",
        }
        for t in runner.timings
    ]


def provenance_rows(runner: PipelineRunner, steps: list[Step]) -> list[dict[str, str]]:
    """Per step: its key, the steps it read, the digest of its ``run.json`` and its arguments."""
    rows = []
    for step in steps:
        rec = runner.record(step.name)
        rows.append(
            {
                "step": step.name,
                "key": str(rec.get("key", ""))[:12],
                "upstream": ", ".join(step.upstream) or "-",
                "run.json sha256": str(rec.get("digest", ""))[:12],
                "arguments": " ".join(rec.get("argv", step.argv)),
            }
        )
    return rows


def write_reports(
    runner: PipelineRunner, steps: list[Step], drawn: dict[str, list[Step]], total_s: float
) -> dict[str, Any]:
    """Write ``OUT/report.md`` and ``OUT/report.html``; return their paths and the summary."""
    root = runner.root
    cohort = cohort_summary(runner)
    all_steps = [*steps, *(s for task in drawn.values() for s in task)]
    tasks = {
        task: fold_metrics(runner.plan.finetune_dir(task) / "summary.csv")
        for task in runner.cfg.tasks
    }
    cohort_rows = [{"what": k, "value": str(v)} for k, v in cohort.items() if k != "failures"]
    md = [f"# hipt pipeline report: `{root}`", "## Cohort", _md_table(cohort_rows)]
    html = [
        f"<h1>hipt pipeline report</h1><p><code>{escape(str(root))}</code></p>",
        "<h2>Cohort</h2>",
        _html_table(cohort_rows),
    ]
    failures = [*cohort["failures"], *runner.problems] or ["none"]
    md += ["Failures:", "\n".join(f"- {f}" for f in failures)]
    html.append(
        "<p>Failures:</p><ul>" + "".join(f"<li>{escape(f)}</li>" for f in failures) + "</ul>"
    )
    for task, rows in tasks.items():
        task_dir = runner.plan.finetune_dir(task)
        plots = [task_dir / p for p in PLOTS if (task_dir / p).is_file()]
        md += [f"## {task}: test-fold metrics ({_rel(task_dir, root)})", _md_table(rows)]
        md += [f"![{p.stem}]({_rel(p, root)})" for p in plots]
        html += [
            f"<h2>{escape(task)}: test-fold metrics</h2>",
            _html_table(rows),
            '<div class="grid">' + "".join(_figure(p, p.stem, root) for p in plots) + "</div>",
        ]
    if runner.cfg.external_slides:
        for task in runner.cfg.tasks:
            pdir = root / "external" / "predict" / task
            rows = external_metrics(pdir)
            plots = [p for p in sorted(pdir.glob("*.png"))]
            title = f"{task}: external cohort (`make predict`, ensemble of the folds)"
            md += [f"## {title}", _md_table(rows) if rows else "(no labels: predictions only)"]
            md += [f"![{p.stem}]({_rel(p, root)})" for p in plots]
            md.append(f"Predictions: [{_rel(pdir / 'predictions.csv', root)}]"
                      f"({_rel(pdir / 'predictions.csv', root)})")  # fmt: skip
            html += [f"<h2>{escape(title)}</h2>", _html_table(rows),
                     '<div class="grid">' + "".join(_figure(p, p.stem, root) for p in plots)
                     + "</div>"]  # fmt: skip
    md.append("## Heatmaps (highest- and lowest-scored patients per task)")
    html.append(
        "<h2>Heatmaps (highest- and lowest-scored patients per task)</h2><div class='grid'>"
    )
    for task, picks in drawn.items():
        for step in picks:
            page, picture = step.out / "index.html", step.out / HEATMAP_PICTURE
            caption = f"{task}: {step.out.name}"
            md.append(f"- {caption}: [{_rel(page, root)}]({_rel(page, root)})")
            if picture.is_file():
                html.append(_figure(picture, caption, root, link=page))
    html.append("</div>")
    md += [f"## Step wall times (total this run: {total_s:.1f} s)", _md_table(timing_rows(runner))]
    html += [
        f"<h2>Step wall times (total this run: {total_s:.1f} s)</h2>",
        _html_table(timing_rows(runner)),
    ]
    lineage = {s.name: r["wandb"] for s in all_steps if "wandb" in (r := runner.record(s.name))}
    arts = [
        {"step": name, "artifacts": ", ".join(w["artifacts"]), "uses": ", ".join(w["uses"]) or "-",
         "mode": w["mode"]}
        for name, w in lineage.items()
    ]  # fmt: skip
    md += ["## W&B artifacts of the current outputs", _md_table(arts)]
    html += ["<h2>W&B artifacts of the current outputs</h2>", _html_table(arts)]
    prov = provenance_rows(runner, all_steps)
    md += [
        "## Provenance of every step",
        _md_table(prov),
        f"W&B group `{runner.group}` ({runner.cfg.wandb.mode}); offline runs upload with "
        "`wandb sync <folder>`.",
    ]
    html += ["<h2>Provenance of every step</h2>", _html_table(prov)]
    md_path, html_path = root / "report.md", root / "report.html"
    atomic_write_text(md_path, "\n\n".join(md) + "\n")
    atomic_write_text(html_path, _page("hipt pipeline report", "\n".join(html)))
    return {
        "report_md": str(md_path),
        "report_html": str(html_path),
        "cohort": cohort,
        "metrics": tasks,
        "wandb_artifacts": lineage,
        "seconds": round(total_s, 2),
    }


def _figure(picture: Path, caption: str, root: Path, link: Path | None = None) -> str:
    img = f'<img src="{escape(_rel(picture, root))}" alt="{escape(caption)}">'
    if link is not None:
        img = f'<a href="{escape(_rel(link, root))}">{img}</a>'
    return f"<figure>{img}<figcaption>{escape(caption)}</figcaption></figure>"


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<link rel="icon" href="data:,"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )
