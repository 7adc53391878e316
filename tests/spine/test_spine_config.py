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


def _schemas():
    from hipt.demo.config import DemoConfig
    from hipt.extract.config import ExtractConfig
    from hipt.finetune.config import FinetuneConfig
    from hipt.heatmap.config import HeatmapConfig
    from hipt.pretrain.config import PretrainConfig
    from hipt.slides.tile_config import TileConfig

    return {
        "tile": TileConfig, "extract": ExtractConfig, "heatmap": HeatmapConfig,
        "pretrain_256": PretrainConfig, "pretrain_4k": PretrainConfig, "tests": PretrainConfig,
        "finetune": FinetuneConfig, "demo": DemoConfig,
    }  # fmt: skip


def test_every_conf_yaml_validates_against_its_schema():
    """Every conf/**/*.yaml merges into its stage's typed schema: no unknown key, no bad type.

    Mandatory values (``???``, e.g. input folders) may stay open; they are given at run time.
    """
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[2] / "conf"
    schemas = _schemas()
    files = sorted(conf.rglob("*.yaml"))
    assert len(files) >= 8, files
    for f in files:
        rel = f.relative_to(conf)
        key = rel.parts[0] if len(rel.parts) > 1 else f.stem
        if key == "demo" and len(rel.parts) > 1:
            key = f.stem  # the demo's per-stage configs, e.g. conf/demo/pretrain_4k.yaml
        schema = schemas[key]
        layer = OmegaConf.load(f)
        try:
            OmegaConf.merge(OmegaConf.structured(schema), layer)
        except Exception as exc:  # noqa: BLE001 - report which file failed
            raise AssertionError(f"{rel}: {exc}") from exc
