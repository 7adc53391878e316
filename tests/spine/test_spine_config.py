import dataclasses
from pathlib import Path

import pytest

from hipt.config import (
    HARDWARE,
    NON_RESULT,
    WandbConfig,
    config_hash,
    hardware,
    keys_with_role,
    load_config,
    non_result,
    save_resolved,
)
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


def _stages():
    """conf/ top-level name -> (schema, validate, dummy values for the mandatory keys)."""
    from hipt.demo.config import DemoConfig
    from hipt.demo.config import validate as demo_validate
    from hipt.extract.config import Encode4KConfig, ExtractConfig, validate_encode4k
    from hipt.extract.config import validate as extract_validate
    from hipt.finetune.config import FinetuneConfig
    from hipt.finetune.runner import check_config
    from hipt.heatmap.config import HeatmapConfig
    from hipt.heatmap.config import validate as heatmap_validate
    from hipt.pipeline.config import PipelineConfig
    from hipt.pipeline.config import validate as pipeline_validate
    from hipt.predict.config import PredictConfig
    from hipt.predict.config import validate as predict_validate
    from hipt.pretrain.config import PretrainConfig
    from hipt.pretrain.config import validate as pretrain_validate
    from hipt.tile.config import TileConfig
    from hipt.tile.config import validate as tile_validate

    pretrain = (PretrainConfig, pretrain_validate, ["out=o", "data.tiles=t", "data.features=f"])
    a_file, a_folder = Path(__file__), Path(__file__).parent  # inputs the validators find
    return {
        "tile": (TileConfig, tile_validate, ["slides=s"]),
        "extract": (ExtractConfig, extract_validate, ["tiles=t"]),
        "heatmap": (HeatmapConfig, heatmap_validate, ["slide=s", "features=f", "out=o"]),
        "predict": (PredictConfig, predict_validate, ["model=m", "cohort=c", "features=f",
                                                      "out=o"]),
        "pretrain_256": pretrain, "pretrain_4k": pretrain, "tests": pretrain,
        "finetune": (FinetuneConfig, check_config, ["cohort=c", "features=f", "out=o"]),
        "demo": (DemoConfig, demo_validate, []),
        "encode_4k": (Encode4KConfig, validate_encode4k, ["features=f", f"checkpoint4k={a_file}"]),
        "pipeline": (PipelineConfig, pipeline_validate, [
            f"slides={a_folder}", f"cohort={a_file}", "out=o", f"checkpoint256={a_file}",
            f"checkpoint4k={a_file}"]),
    }  # fmt: skip


def test_every_conf_yaml_validates_against_its_schema():
    """Every conf/**/*.yaml loads into its stage's typed schema (no unknown key, no bad type) and
    passes the stage's own validate(); mandatory values (input folders) get dummy values."""
    conf = Path(__file__).resolve().parents[2] / "conf"
    stages = _stages()
    files = sorted(conf.rglob("*.yaml"))
    assert len(files) >= 8, files
    for f in files:
        rel = f.relative_to(conf)
        key = rel.parts[0] if len(rel.parts) > 1 else f.stem
        if key == "demo" and len(rel.parts) > 1:
            key = f.stem  # the demo's per-stage configs, e.g. conf/demo/pretrain_4k.yaml
        schema, validate, required = stages[key]
        try:
            cfg = load_config(schema, f, required)
            validate(cfg)
        except Exception as exc:  # noqa: BLE001 - report which file failed
            raise AssertionError(f"{rel}: {exc}") from exc
        assert isinstance(cfg, schema), rel


def test_load_config_returns_the_dataclass_with_real_types(tmp_path):
    """load_config gives the schema's dataclass (nested ones too), not a DictConfig."""
    y = _yaml(tmp_path, "slides: a\n")
    cfg = load_config(Cfg, y, ["trainer.max_steps=7"])
    assert type(cfg) is Cfg and type(cfg.trainer) is Inner and type(cfg.wandb) is WandbConfig
    assert cfg.trainer.max_steps == 7 and isinstance(cfg.trainer.lr, float)


@dataclasses.dataclass
class Declared:
    out: str = non_result("o")
    lr: float = 0.1
    devices: int = hardware(1)
    trainer: Inner = dataclasses.field(default_factory=Inner)
    wandb: WandbConfig = non_result(default_factory=WandbConfig)


def test_non_result_fields_leave_the_hash_and_hardware_fields_do_not():
    """config_hash ignores fields declared non_result (whole nested blocks too) and keeps every
    other field, hardware ones included; keys_with_role lists them by dotted name."""
    a = Declared()
    assert config_hash(a) == config_hash(Declared(out="elsewhere", wandb=WandbConfig(mode="x")))
    assert config_hash(a) != config_hash(Declared(lr=0.2))
    assert config_hash(a) != config_hash(Declared(devices=2))
    assert config_hash(a) != config_hash(Declared(trainer=Inner(max_steps=3)))
    assert keys_with_role(Declared, NON_RESULT) == ("out", "wandb")
    assert keys_with_role(Declared, HARDWARE) == ("devices",)
