"""The demo's stage invocations: which public stage entry runs with which arguments, in order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from hipt.demo.cohort import SAMPLE_ID, CohortFiles
from hipt.demo.config import DemoConfig
from hipt.pipeline.config import PipelineConfig
from hipt.pipeline.engine import BACKBONE, Step, order_steps, wandb_args
from hipt.pipeline.plan import GIVEN, PipelinePlan

#: The demo's stage folders (under ``out``): everything made from the cohort.
STAGE_FOLDERS = (
    "tile",
    "pretrain_256",
    "features",
    "pretrain_4k",
    "finetune",
    "heatmaps",
    "external",
)
#: The external cohort's folder (its cohort, tiles, stores and predictions).
EXTERNAL = "external"
HEATMAP_TASK = "subtype"


def as_settings(args: list[str]) -> dict[str, str]:
    """``["model.name=x", "heads=[0]"]`` -> ``{"model.name": "x", "heads": "[0]"}`` (in order)."""
    return dict(a.split("=", 1) for a in args)


def control_name(task: str, shuffle: int | None) -> str:
    """Folder name of a finetune run: ``<task>``, or ``<task>-shuffled-<n>`` for control ``n``."""
    return task if shuffle is None else f"{task}-shuffled-{shuffle}"


class Plan:
    """Folders and arguments of every step, from the demo config and the cohort files."""

    def __init__(
        self,
        cfg: DemoConfig,
        cohort: CohortFiles,
        group: str,
        external: CohortFiles | None = None,
    ) -> None:
        self.cfg, self.cohort, self.root = cfg, cohort, Path(cfg.out)
        self.external_cohort = external
        self.wandb = wandb_args(cfg.wandb, group)

    def folder(self, name: str) -> Path:
        """Output folder of a stage: ``<out>/<name>``."""
        return self.root / name

    def pipeline_config(self) -> PipelineConfig:
        """The demo as a ``make pipeline`` run: its cohort, both pretraining levels, its stages.

        The demo's ``key=value`` stage overrides become the pipeline's per-stage settings.
        """
        s = self.cfg.stages
        return PipelineConfig(
            slides=str(self.cohort.manifest_csv),
            cohort=str(self.cohort.cohort_csv),
            out=str(self.root),
            tasks=list(self.cfg.tasks),
            pretrain="both",
            pretrain_256_config=s.pretrain_256_config,
            pretrain_4k_config=s.pretrain_4k_config,
            tile=as_settings(self.fill(s.tile)),
            pretrain_256=as_settings(self.fill(s.pretrain_256)),
            extract=as_settings(self.fill(s.extract)),
            pretrain_4k=as_settings(self.fill(s.pretrain_4k)),
            wandb=self.cfg.wandb,
        )

    def early(self) -> Iterator[Step]:
        """The pipeline's steps up to the region features, then every finetune run.

        Those are tile, pretrain-256, extract, pretrain-4k and encode-4k, in the order their
        inputs give.
        """
        steps = PipelinePlan(self.pipeline_config()).steps()
        yield from order_steps([st for st in steps if st.module != "finetune"], given=GIVEN)
        head = self.cfg.headline_model
        for model in [head, *(m for m in self.cfg.run_models if m != head)]:
            model_args = list(self.cfg.models[model])
            headline = model == head
            repeats = range(1, self.cfg.control_repeats + 1)
            controls = list(repeats) if self.cfg.controls and headline else []
            for task in self.cfg.tasks:
                for shuffle in (None, *controls):
                    yield self._finetune(model, model_args, task, shuffle)

    def fill(self, args: list[str]) -> list[str]:
        """Replace ``{pretrain_256}`` / ``{pretrain_4k}`` with the exported backbone files."""
        paths = {k: str(self.folder(k) / BACKBONE) for k in ("pretrain_256", "pretrain_4k")}
        return [
            a.replace("{pretrain_256}", paths["pretrain_256"]).replace(
                "{pretrain_4k}", paths["pretrain_4k"]
            )
            for a in args
        ]

    def finetune_dir(self, model: str, task: str, shuffle: int | None = None) -> Path:
        """``<out>/finetune/<model>/<task>``, or ``<task>-shuffled-<n>`` for control ``n``."""
        return self.root / "finetune" / model / control_name(task, shuffle)

    def _finetune(self, model: str, model_args: list[str], task: str, shuffle: int | None) -> Step:
        s = self.cfg.stages
        out = self.finetune_dir(model, task, shuffle)
        argv = [
            f"task={task}",
            f"cohort={self.cohort.cohort_csv}",
            f"features={self.folder('features')}",
            f"out={out}",
            *self.fill([*s.finetune, *model_args, *s.finetune_tasks.get(task, [])]),
        ]
        if shuffle is not None:
            argv += ["shuffle_labels=true", f"seed={shuffle}"]  # permutation n: seed n
        name = f"finetune_{model}_{control_name(task, shuffle).replace('-', '_')}"
        return Step(
            name,
            "finetune",
            "finetune",
            argv,
            out,
            "summary.csv",
            ["encode_4k", "pretrain_4k"],
            ["overwrite=true"],
        )

    def external(self) -> Iterator[Step]:
        """The external cohort's steps.

        Tile and extract it with the training cohort's encoders (both pretrained backbones:
        it comes after pretrain-4k, so its ``feats4k`` need no re-encoding), then predict it
        with the headline model's fold models, task by task.
        """
        ext = self.external_cohort
        if ext is None:
            return
        s, head = self.cfg.stages, self.cfg.headline_model
        root = self.root / EXTERNAL
        tiles, features = root / "tile", root / "features"
        p256 = self.folder("pretrain_256") / BACKBONE
        p4k = self.folder("pretrain_4k") / BACKBONE
        yield Step(
            "external_tile",
            "external",
            "tile",
            [f"slides={ext.manifest_csv}", f"out={tiles}", *self.fill(s.tile)],
            tiles,
            "regions.parquet",
            ["external_cohort"],
        )
        yield Step(
            "external_extract",
            "external",
            "extract_features",
            [
                f"tiles={tiles}",
                f"out={features}",
                f"checkpoint256={p256}",
                f"checkpoint4k={p4k}",
                *self.fill(s.extract),
            ],  # fmt: skip
            features,
            "summary.json",
            ["external_tile", "pretrain_256", "pretrain_4k"],
        )
        for task in self.cfg.tasks:
            out = root / "predict" / task
            argv = [
                f"model={self.finetune_dir(head, task)}",
                f"cohort={ext.cohort_csv}",
                f"features={features}",
                f"out={out}",
                f"bootstrap={self.cfg.external_bootstrap}",
            ]
            upstream = ["external_extract", f"finetune_{head}_{task}"]
            yield Step(
                f"predict_{task}",
                "predict",
                "predict",
                argv,
                out,
                "summary.json",
                upstream,
                ["overwrite=true"],
            )

    def heatmap_slides(self) -> list[tuple[str, Path, str | None]]:
        """``(slide_id, slide path, patient_id)`` to draw: one slide per subtype, then more."""
        cohort = pd.read_csv(self.cohort.cohort_csv, dtype=str)
        manifest = pd.read_csv(self.cohort.manifest_csv, dtype=str).set_index("slide_id")
        first = cohort.drop_duplicates("patient_id")
        ordered = pd.concat([first.drop_duplicates("subtype"), first]).drop_duplicates("slide_id")
        picks = []
        for row in ordered.head(self.cfg.heatmap_slides).itertuples(index=False):
            path = self.cohort.root / manifest.loc[row.slide_id, "path"]
            picks.append((row.slide_id, path, row.patient_id))
        if SAMPLE_ID in manifest.index and self.cfg.heatmap_slides > 0:
            picks.append((SAMPLE_ID, Path(manifest.loc[SAMPLE_ID, "path"]), None))
        return picks

    def model_fold(self, patient_id: str | None) -> Path:
        """The finetune fold whose test set holds ``patient_id`` (fold 0 for other slides)."""
        task_dir = self.finetune_dir(self.cfg.headline_model, HEATMAP_TASK)
        folds = sorted(task_dir.glob("fold_*"), key=lambda p: int(p.name.split("_")[1]))
        for fold in folds:
            preds = fold / "predictions.csv"
            if patient_id and preds.is_file():
                if patient_id in set(pd.read_csv(preds, dtype=str)["patient_id"]):
                    return fold
        return task_dir / "fold_0"

    def late(self) -> Iterator[Step]:
        """One heatmap run per picked slide, with the finetuned subtype model of its fold."""
        if HEATMAP_TASK not in self.cfg.tasks:
            return
        p256 = self.folder("pretrain_256") / BACKBONE
        for sid, path, patient in self.heatmap_slides():
            out = self.root / "heatmaps" / sid
            argv = [
                f"slide={path}",
                f"features={self.folder('features') / f'{sid}.zarr'}",
                f"model={self.model_fold(patient)}",
                f"checkpoint256={p256}",
                f"out={out}",
                *self.fill(self.cfg.stages.heatmap),
            ]
            yield Step(
                f"heatmap_{sid}",
                "heatmap",
                "heatmap",
                argv,
                out,
                "index.html",
                ["encode_4k", f"finetune_{self.cfg.headline_model}_{HEATMAP_TASK}"],
                ["overwrite=true"],
            )
