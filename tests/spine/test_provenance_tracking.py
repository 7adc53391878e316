import json
from pathlib import Path

import pytest
from wandb_runs import find_offline_runs, read_offline_run

from hipt.cli import expand_shortcuts
from hipt.config import WandbConfig
from hipt.errors import ConfigError
from hipt.provenance import RunInfo, sha256_file
from hipt.tracking import create_logger, finish, resolve_mode


def test_run_info_records_versions_inputs_and_hash(tmp_path):
    """run.json names the config hash, the input sizes and the installed torch version."""
    src = tmp_path / "in.bin"
    src.write_bytes(b"abc")
    path = RunInfo.collect("unit", "deadbeef", inputs=[src, tmp_path / "nope"]).write(tmp_path)
    info = json.loads(path.read_text())
    assert info["config_hash"] == "deadbeef"
    assert info["inputs"][0] == {"path": str(src), "kind": "file", "size_bytes": 3}
    assert info["inputs"][1]["kind"] == "missing"
    import torch

    assert info["versions"]["torch"] == torch.__version__.split("+")[0] or info["versions"]["torch"]
    assert sha256_file(src) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_shortcuts_map_and_unknown_shortcut_is_an_error():
    """Upper-case Makefile shortcuts become config keys; Makefile-only ones are dropped."""
    got = expand_shortcuts(["OUT=o", "x.y=1", "PYTHON=p"], {"OUT": "out"})
    assert got == ["out=o", "x.y=1"]
    with pytest.raises(ConfigError, match="unknown shortcut 'SLIDEZ'"):
        expand_shortcuts(["SLIDEZ=a"], {"SLIDES": "slides"})


def test_env_mode_wins(monkeypatch):
    """WANDB_MODE overrides the config, as wandb itself does; bad modes are refused."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(WandbConfig(mode="online")) == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    with pytest.raises(ConfigError):
        resolve_mode(WandbConfig(mode="sometimes"))


def test_offline_run_writes_logged_values(tmp_path, monkeypatch):
    """An offline W&B run leaves a local run folder whose summary holds what was logged."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = create_logger(WandbConfig(), "unit", tmp_path, run_config={"a": 1})
    logger.log_metrics({"slides/ok": 3, "seconds": 1.5})
    finish(logger)
    runs = find_offline_runs(tmp_path)
    assert len(runs) == 1 and runs[0].parent == Path(tmp_path, "wandb")
    run = read_offline_run(runs[0], require=("slides/ok", "seconds"))
    assert run["summary"]["slides/ok"] == 3 and run["summary"]["seconds"] == 1.5
    assert run["config"]["a"] == 1
