"""conf/extract.yaml loads into ExtractConfig; bad values and keys stop with exit code 2."""

from __future__ import annotations

import pytest

from hipt.config import load_config
from hipt.errors import ConfigError
from hipt.extract.config import ExtractConfig, validate
from hipt.models.runtime import resolve_precision


def test_yaml_defaults_load_and_validate():
    """The shipped YAML equals the schema defaults on every key it sets, and validates."""
    cfg = load_config(ExtractConfig, "extract.yaml", ["tiles=t"])
    validate(cfg)
    assert (cfg.dtype, cfg.skip_background, cfg.on_stale) == ("float16", False, "recompute")
    assert cfg.checkpoint256 is None and cfg.model_256 == "vit256_small"
    assert resolve_precision(cfg.precision, cfg.accelerator) in ("32-true", "bf16-mixed")
    cpu = load_config(ExtractConfig, "extract.yaml", ["tiles=t", "accelerator=cpu"])
    assert resolve_precision(cpu.precision, cpu.accelerator) == "32-true"


@pytest.mark.parametrize(
    "override", ["dtype=float64", "on_stale=ignore", "batch_size=0", "compile=maybe"]
)
def test_invalid_values_are_config_errors(override: str):
    """Each invalid value is named in a ConfigError."""
    cfg = load_config(ExtractConfig, "extract.yaml", ["tiles=t", override])
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        validate(cfg)


def test_cli_unknown_key_and_missing_tiles_exit_2(tmp_path):
    """Typos and a missing TILES are exit code 2 before anything runs; an absent tile output
    is a one-line error (exit 1)."""
    from pipelines.extract_features import main

    assert main(["TILES=x", "btach_size=3"]) == 2
    assert main([]) == 2
    assert main([f"TILES={tmp_path}", f"OUT={tmp_path / 'o'}"]) == 1
    assert not (tmp_path / "o").exists()
