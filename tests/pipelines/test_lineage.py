"""W&B lineage of pipeline steps, read back from the offline run files wandb writes."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from wandb_runs import find_offline_runs, read_artifacts, read_offline_run

from hipt.config import WandbConfig
from hipt.pipeline.engine import Step
from hipt.pipeline.lineage import log_step
from hipt.provenance import sha256_file


def _step(root: Path, name: str, done: str, reads: tuple[str, ...], writes: tuple[str, ...]):
    out = root / name
    out.mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"stage": name}))
    (out / done).write_text("done")
    return Step(name, name, name, [f"out={out}"], out, done, reads=reads, writes=writes)


@pytest.fixture
def two_steps(tmp_path):
    tile = _step(tmp_path, "tile", "regions.parquet", ("slides",), ("tiles",))
    extract = _step(tmp_path, "extract", "summary.json", ("tiles",), ("feats256", "feats4k"))
    return tile, extract


def test_offline_runs_hold_each_output_artifact_and_the_inputs_it_read(two_steps, monkeypatch):
    """tile logs artifact `<group>-tiles` (type tiles) holding its run.json (W&B's md5 of the
    file) and a reference to regions.parquet; extract logs two `features` artifacts and names
    the tiles artifact (with run.json's sha256) as its input in the run config."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    tile, extract = two_steps
    cfg = WandbConfig(mode="offline")
    assert log_step(tile, cfg, "grp", "k1" * 8, {}) == {
        "artifacts": ["grp-tiles"], "uses": [], "mode": "offline"}  # fmt: skip
    tiles_sha = sha256_file(tile.out / "run.json")
    logged = log_step(extract, cfg, "grp", "k2" * 8, {"tiles": tiles_sha})
    assert logged == {"artifacts": ["grp-feats256", "grp-feats4k"], "uses": ["grp-tiles"],
                      "mode": "offline"}  # fmt: skip

    (tile_run,) = find_offline_runs(tile.out)
    (art,) = read_artifacts(tile_run)
    md5 = base64.b64encode(hashlib.md5((tile.out / "run.json").read_bytes()).digest()).decode()
    assert (art["type"], art["name"]) == ("tiles", "grp-tiles")
    assert set(art["aliases"]) == {"latest", "key-k1k1k1k1k1k1"}
    assert art["files"]["run.json"][0] == md5
    assert art["files"]["outputs/regions.parquet"][1] == (tile.out / "regions.parquet").as_uri()
    assert art["metadata"]["out"] == str(tile.out)

    (ext_run,) = find_offline_runs(extract.out)
    arts = read_artifacts(ext_run)
    assert [(a["type"], a["name"]) for a in arts] == [("features", "grp-feats256"),
                                                      ("features", "grp-feats4k")]  # fmt: skip
    config = read_offline_run(ext_run)["config"]
    assert config["uses"] == [{"artifact": "grp-tiles", "type": "tiles",
                               "run_json_sha256": tiles_sha}]  # fmt: skip
    assert config["step"] == "extract"


def test_online_runs_declare_inputs_with_use_artifact(two_steps, monkeypatch):
    """Online (no server here: wandb.init is replaced by a recorder), each input artifact is
    declared with `use_artifact("<group>-<item>:latest", type=...)` before the outputs are
    logged; W&B failures never fail the step."""
    import wandb

    calls: list[tuple] = []

    class Recorder:
        def use_artifact(self, name, type=None):  # noqa: A002 - wandb's signature
            calls.append(("use", name, type))

        def log_artifact(self, art, aliases=()):
            calls.append(("log", art.name, art.type))

        def finish(self):
            calls.append(("finish",))

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(wandb, "init", lambda **kw: Recorder())
    _, extract = two_steps
    log_step(extract, WandbConfig(mode="online"), "grp", "k" * 16, {"tiles": "abc"})
    assert calls == [("use", "grp-tiles:latest", "tiles"), ("log", "grp-feats256", "features"),
                     ("log", "grp-feats4k", "features"), ("finish",)]  # fmt: skip

    def broken(**kw):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken)
    assert log_step(extract, WandbConfig(mode="online"), "grp", "k" * 16, {}) is None
