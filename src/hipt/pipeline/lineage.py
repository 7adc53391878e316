"""W&B lineage of a pipeline run: each step's outputs as an artifact, its inputs declared.

Every step that ran gets a short W&B run in the pipeline's group (``job_type`` = its stage,
name = the step) that logs what it wrote as one artifact per written item
(``<group>-<artifact>``, e.g. ``pipeline-1a2b3c4d-tiles``; type ``tiles``, ``features``,
``backbone``, ``model``, ``predictions`` or ``heatmap``). The artifact holds the step's
``run.json`` (its provenance: config hash, inputs, versions; so the artifact's digest changes
exactly when the outputs were remade) and a reference to the stage's completion file; its
metadata carries the step key, the output folder and the arguments. Large outputs (stores,
checkpoints) are never copied into W&B.

Inputs: an online run declares each artifact it read with ``run.use_artifact(...)``, so the W&B
UI draws tiles -> stores -> models -> predictions and heatmaps. wandb refuses ``use_artifact``
offline (it needs the server's artifact id), so an offline run records the same inputs, with
their digests, in its config (``uses``); ``wandb sync`` uploads the artifacts, and the input
list stays readable.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hipt.config import WandbConfig
from hipt.errors import one_line
from hipt.pipeline.engine import Step
from hipt.tracking import keep_wandb_files_in, resolve_mode

log = logging.getLogger(__name__)

#: Artifact type of what a step writes (by the written item's kind).
TYPES = {
    "tiles": "tiles",
    "external_tiles": "tiles",
    "external_features": "features",
    "predictions": "predictions",
    "feats256": "features",
    "feats4k": "features",
    "vit256": "backbone",
    "vit4k": "backbone",
    "model": "model",
    "heatmap": "heatmap",
}


def artifact_type(item: str) -> str:
    """``model:subtype`` -> ``model``; ``feats4k`` -> ``features``."""
    kind = item.split(":", 1)[0]
    return TYPES.get(kind, "heatmap" if kind.startswith("heatmap") else "output")


def artifact_name(group: str, item: str) -> str:
    """W&B-safe artifact name of ``item`` in a pipeline group."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in item)
    return f"{group}-{safe}"


def log_step(
    step: Step,
    cfg: WandbConfig,
    group: str,
    key: str,
    inputs: dict[str, str | None],
) -> dict[str, Any] | None:
    """Log ``step``'s outputs as artifacts and declare ``inputs`` (artifact item -> digest).

    Returns:
        What was logged (``{"artifacts": [...], "uses": [...], "mode": ...}``), or None when
        W&B is disabled. A W&B failure is logged as a warning, never fails the pipeline.
    """
    mode = resolve_mode(cfg)
    if mode == "disabled":
        return None
    try:
        return _log(step, cfg, group, key, inputs, mode)
    except Exception as exc:  # noqa: BLE001 - W&B must never fail a finished step
        log.warning("pipeline: W&B lineage of %s not logged: %s", step.name, one_line(exc))
        return None


def _log(
    step: Step,
    cfg: WandbConfig,
    group: str,
    key: str,
    inputs: dict[str, str | None],
    mode: str,
) -> dict[str, Any]:
    import wandb

    out = Path(step.out)
    keep_wandb_files_in(out)
    uses = [{"artifact": artifact_name(group, item), "type": artifact_type(item),
             "run_json_sha256": digest} for item, digest in inputs.items()]  # fmt: skip
    run = wandb.init(
        project=cfg.project, entity=cfg.entity, group=group, job_type=step.stage,
        name=step.name, dir=str(out), mode=mode, tags=list(cfg.tags),  # type: ignore[arg-type]
        config={"step": step.name, "key": key, "argv": step.argv, "uses": uses},
        settings=wandb.Settings(console="off", silent=True), reinit="create_new",
    )  # fmt: skip
    try:
        if mode == "online":
            for use in uses:
                run.use_artifact(f"{use['artifact']}:latest", type=use["type"])
        logged = []
        for item in step.writes:
            art = wandb.Artifact(artifact_name(group, item), type=artifact_type(item),
                                 metadata={"step": step.name, "key": key, "out": str(out),
                                           "argv": step.argv})  # fmt: skip
            art.add_file(str(out / "run.json"), name="run.json")
            done = (out / step.done_file).resolve()
            art.add_reference(done.as_uri(), name=f"outputs/{step.done_file}", checksum=False)
            run.log_artifact(art, aliases=["latest", f"key-{key[:12]}"])
            logged.append(art.name)
    finally:
        run.finish()
    return {"artifacts": logged, "uses": [u["artifact"] for u in uses], "mode": mode}
