"""The steps of ``make pipeline``: which stage runs with which arguments, read from the config.

Each step declares what it reads and writes; :func:`~hipt.pipeline.engine.order_steps` derives
the order. The artifacts: ``slides`` and ``cohort`` (the user's), ``tiles``, ``vit256`` and
``vit4k`` (pretrained backbones), ``feats256`` and ``feats4k`` (the stores' two arrays; with
``PRETRAIN=4k|both`` the second comes from ``encode-4k`` after ``pretrain-4k``, never from the
random ViT-4K of extraction time), ``model:<task>`` (the finetuned fold models) and
``heatmaps:<task>``; with an external cohort also ``external_tiles``, ``external_features``
and ``predictions:<task>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hipt.pipeline.config import PipelineConfig
from hipt.pipeline.engine import BACKBONE, Step

GIVEN = ("slides", "cohort", "external_slides", "external_cohort")


def as_args(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"model": {"name": "x"}, "heads": [0]}`` -> ``["model.name=x", "heads=[0]"]``."""
    out: list[str] = []
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += as_args(value, f"{name}.")
        else:
            out.append(f"{name}={_value(value)}")
    return out


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


class PipelinePlan:
    """Folders, weights and steps of one pipeline run."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.out)
        self.tiles = self.root / "tile"
        self.features = self.root / "features"
        self.p256 = self.root / "pretrain_256"
        self.p4k = self.root / "pretrain_4k"
        both, any4k = cfg.pretrain == "both", cfg.pretrain in ("4k", "both")
        self.checkpoint256 = str(self.p256 / BACKBONE) if both else cfg.checkpoint256
        self.checkpoint4k = str(self.p4k / BACKBONE) if any4k else cfg.checkpoint4k

    def finetune_dir(self, task: str) -> Path:
        """``<out>/finetune/<task>``."""
        return self.root / "finetune" / task

    def steps(self) -> list[Step]:
        """Every step known before finetuning ends (heatmaps are picked from its results)."""
        cfg = self.cfg
        steps = [self._tile()]
        if cfg.pretrain == "both":
            steps.append(self._pretrain("256", self.tiles, ("tiles",)))
        steps.append(self._extract())
        if cfg.pretrain != "none":
            steps.append(self._pretrain("4k", self.features, ("feats256",)))
            steps.append(self._encode_4k())
        steps += [self._finetune(task) for task in cfg.tasks]
        if cfg.external_slides:
            steps += self._external()
        return steps

    def _external(self) -> list[Step]:
        """Tile and extract the external cohort with the final encoders, predict every task."""
        cfg, root = self.cfg, self.root / "external"
        tiles, features = root / "tile", root / "features"
        tile = Step("external_tile", "external", "tile",
                    [f"slides={cfg.external_slides}", f"out={tiles}", *as_args(cfg.tile)],
                    tiles, "regions.parquet", reads=("external_slides",),
                    writes=("external_tiles",), tolerate="partial")  # fmt: skip
        argv = [f"tiles={tiles}", f"out={features}", *self._model256("model_256")]
        reads = ["external_tiles"]
        for key, path, made_by in (("checkpoint256", self.checkpoint256, "vit256"),
                                   ("checkpoint4k", self.checkpoint4k, "vit4k")):  # fmt: skip
            if path:
                argv.append(f"{key}={path}")
                if Path(path).parent in (self.p256, self.p4k):
                    reads.append(made_by)  # pretrained here: extract after it
        extract = Step("external_extract", "external", "extract_features",
                       [*argv, *as_args(cfg.extract)], features, "summary.json",
                       reads=tuple(reads), writes=("external_features",),
                       tolerate="partial")  # fmt: skip
        steps = [tile, extract]
        for task in cfg.tasks:
            out = root / "predict" / task
            argv = [f"model={self.finetune_dir(task)}", f"cohort={cfg.external_cohort}",
                    f"features={features}", f"out={out}", *as_args(cfg.predict)]  # fmt: skip
            steps.append(Step(f"predict_{task}", "predict", "predict", argv, out, "summary.json",
                              policy=["overwrite=true"],
                              reads=("external_features", "external_cohort", f"model:{task}"),
                              writes=(f"predictions:{task}",), tolerate="partial"))  # fmt: skip
        return steps

    def _model256(self, key: str) -> list[str]:
        """``key=<model256>`` when the pipeline names a patch encoder."""
        return [f"{key}={self.cfg.model256}"] if self.cfg.model256 else []

    def _tile(self) -> Step:
        argv = [f"slides={self.cfg.slides}", f"out={self.tiles}"]
        if self.cfg.annotations:
            argv.append(f"annotations={self.cfg.annotations}")
        argv += as_args(self.cfg.tile)
        return Step(
            "tile",
            "tile",
            "tile",
            argv,
            self.tiles,
            "regions.parquet",
            reads=("slides",),
            writes=("tiles",),
            tolerate="partial",
        )

    def _pretrain(self, level: str, data: Path, reads: tuple[str, ...]) -> Step:
        cfg = self.cfg
        config = cfg.pretrain_256_config if level == "256" else cfg.pretrain_4k_config
        source = f"data.tiles={data}" if level == "256" else f"data.features={data}"
        out = self.p256 if level == "256" else self.p4k
        extra = cfg.pretrain_256 if level == "256" else cfg.pretrain_4k
        model = self._model256("model.name") if level == "256" else []
        argv = [f"config={config}", f"level={level}", source, f"out={out}", *model,
                *as_args(extra)]  # fmt: skip
        return Step(
            f"pretrain_{level}",
            f"pretrain-{level}",
            "pretrain",
            argv,
            out,
            BACKBONE,
            reads=reads,
            writes=(f"vit{level}",),
        )

    def _extract(self) -> Step:
        cfg = self.cfg
        argv = [f"tiles={self.tiles}", f"out={self.features}", *self._model256("model_256")]
        if self.checkpoint256:
            argv.append(f"checkpoint256={self.checkpoint256}")
        if cfg.checkpoint4k:  # with PRETRAIN=4k|both, encode-4k replaces feats4k afterwards
            argv.append(f"checkpoint4k={cfg.checkpoint4k}")
        argv += as_args(cfg.extract)
        reads = ("tiles", "vit256") if cfg.pretrain == "both" else ("tiles",)
        writes = ("feats256",) if cfg.pretrain != "none" else ("feats256", "feats4k")
        return Step(
            "extract",
            "extract",
            "extract_features",
            argv,
            self.features,
            "summary.json",
            reads=reads,
            writes=writes,
            tolerate="partial",
        )

    def _encode_4k(self) -> Step:
        out = self.features / "encode_4k"
        argv = [
            f"features={self.features}",
            f"checkpoint4k={self.checkpoint4k}",
            f"out={out}",
            *as_args(self.cfg.encode_4k),
        ]
        return Step(
            "encode_4k",
            "encode-4k",
            "encode_4k",
            argv,
            out,
            "summary.json",
            reads=("feats256", "vit4k"),
            writes=("feats4k",),
            tolerate="partial",
        )

    def _finetune(self, task: str) -> Step:
        from hipt.models import model_spec

        cfg = self.cfg
        out = self.finetune_dir(task)
        argv = [f"task={task}", f"cohort={cfg.cohort}", f"features={self.features}", f"out={out}"]
        if self.checkpoint4k:
            argv.append(f"expect_checkpoint_4k={self.checkpoint4k}")
        extra = {**cfg.finetune, **dict(cfg.finetune_tasks.get(task) or {})}
        model = dict(extra.get("model") or {})
        name = model.get("name") or _finetune_default_model(task)
        if self.checkpoint4k and model_spec(name).region_encoder and "checkpoint_4k" not in model:
            argv.append(f"model.checkpoint_4k={self.checkpoint4k}")  # its frozen ViT-4K
        argv += as_args(extra)
        return Step(
            f"finetune_{task}",
            "finetune",
            "finetune",
            argv,
            out,
            "summary.csv",
            policy=["overwrite=true"],
            reads=("feats4k", "cohort"),
            writes=(f"model:{task}",),
        )


def _finetune_default_model(task: str) -> str:
    """The slide model ``conf/finetune/<task>.yaml`` names."""
    from omegaconf import OmegaConf

    from hipt.config import resolve_yaml

    conf = OmegaConf.load(resolve_yaml(f"finetune/{task}.yaml"))
    return str(OmegaConf.select(conf, "model.name", default="hipt_lgp"))
