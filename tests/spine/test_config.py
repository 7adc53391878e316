import dataclasses
from pathlib import Path

import pytest

from hipt.config import WandbConfig, config_hash, load_config, save_resolved
from hipt.errors import ConfigError


@dataclasses.dataclass
class Inner:
    max_steps: int = 10
    lr: float = 1e-3


@dataclasses.dataclass
class Cfg:
    out: str = "data/x"
    slides: str = "???"
    trainer: Inner = dataclasses.field(default_factory=Inner)
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)


def _yaml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "stage.yaml"
    p.write_text(text)
    return p


def test_layers_merge_in_order(tmp_path):
    """Overrides beat the YAML, which beats the dataclass defaults; types are coerced."""
    y = _yaml(tmp_path, "slides: a\ntrainer:\n  max_steps: 5\n")
    cfg = load_config(Cfg, y, ["trainer.max_steps=2", "trainer.lr=0.5"])
    assert (cfg.slides, cfg.trainer.max_steps, cfg.trainer.lr, cfg.out) == ("a", 2, 0.5, "data/x")


def test_unknown_override_key_names_it_and_suggests(tmp_path):
    """A typo in an override is one error naming the key and the close valid key."""
    y = _yaml(tmp_path, "slides: a\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer.max_step'.*max_steps"):
        load_config(Cfg, y, ["trainer.max_step=3"])


def test_unknown_yaml_key_names_file(tmp_path):
    """A typo inside the YAML names the file."""
    y = _yaml(tmp_path, "slides: a\nslidez: b\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'slidez' in .*stage.yaml"):
        load_config(Cfg, y)


def test_missing_and_wrong_type(tmp_path):
    """Mandatory values must be given; a non-integer for an int field is refused."""
    y = _yaml(tmp_path, "out: o\n")
    with pytest.raises(ConfigError, match="missing required config value.*slides"):
        load_config(Cfg, y)
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        load_config(Cfg, y, ["slides=a", "trainer.max_steps=abc"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(Cfg, y, ["slides"])


def test_hash_ignores_excluded_keys_and_saves_round_trip(tmp_path):
    """The hash changes with result-relevant keys only; resolved_config.yaml reloads equal."""
    y = _yaml(tmp_path, "slides: a\n")
    a = load_config(Cfg, y, ["out=o1"])
    b = load_config(Cfg, y, ["out=o2"])
    c = load_config(Cfg, y, ["trainer.lr=0.1"])
    assert config_hash(a, exclude=("out",)) == config_hash(b, exclude=("out",))
    assert config_hash(a) != config_hash(b)
    assert config_hash(a, exclude=("out",)) != config_hash(c, exclude=("out",))
    path = save_resolved(a, tmp_path / "run")
    again = load_config(Cfg, path)
    assert config_hash(again) == config_hash(a)


def test_every_stage_yaml_loads():
    """Every conf/*.yaml (and conf/finetune/*.yaml) parses as YAML; stage tests validate schemas."""
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[2] / "conf"
    files = sorted(conf.rglob("*.yaml"))
    assert files, "conf/ holds no YAML"
    for f in files:
        OmegaConf.load(f)
