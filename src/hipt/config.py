"""Typed stage configs: dataclass schema <- conf/<stage>.yaml <- dotlist overrides."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from hipt.errors import ConfigError

T = TypeVar("T")

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclasses.dataclass
class WandbConfig:
    """Weights & Biases settings shared by every stage.

    Attributes:
        mode: ``offline`` (default, no network), ``online`` or ``disabled``. The ``WANDB_MODE``
            environment variable wins when set, as wandb itself does.
        project: W&B project name.
        entity: W&B entity (team or user); ``None`` uses the account default.
        group: groups runs of one experiment (e.g. all folds, or every stage of a demo).
        dir: where run files go; ``None`` means ``<out>/wandb``.
        tags: free-form tags.
    """

    mode: str = "offline"
    project: str = "hipt"
    entity: str | None = None
    group: str | None = None
    dir: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)


def _flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys: list[str] = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            child = cfg._get_node(k)  # noqa: SLF001 - avoid resolving interpolations
            if isinstance(child, DictConfig):
                keys.extend(_flat_keys(child, full + "."))
    return keys


def _unknown_key_message(schema_cfg: DictConfig, key: str, source: str) -> str:
    valid = _flat_keys(schema_cfg)
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown config key '{key}' in {source}{hint} (valid keys: {', '.join(valid)})"


def _merge(base: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)  # type: ignore[return-value]
    except ConfigKeyError as exc:
        key = exc.full_key or str(exc.key)
        raise ConfigError(_unknown_key_message(base, key, source)) from None
    except ValidationError as exc:
        raise ConfigError(f"invalid value for '{exc.full_key}' in {source}: {exc.msg}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad config in {source}: {exc}") from None


def parse_overrides(overrides: list[str]) -> DictConfig:
    """Parse ``key=value`` strings; a token without ``=`` is an error naming it."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except (OmegaConfBaseException, yaml.YAMLError) as exc:  # a value YAML cannot parse
        raise ConfigError(f"cannot parse overrides {overrides}: {exc}") from None


def load_config(
    schema: type[T], yaml_path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """Build a typed config: ``schema`` defaults, then ``yaml_path``, then ``overrides``.

    Args:
        schema: a dataclass type whose fields are the valid keys.
        yaml_path: stage YAML (absolute, or relative to the repository ``conf/`` folder).
        overrides: dotlist strings such as ``["out=data/x", "trainer.max_steps=2"]``.

    Returns:
        A structured ``DictConfig`` typed as ``schema`` (attribute access, validated types).

    Raises:
        ConfigError: unknown key, wrong type, missing mandatory value (``???``), unreadable YAML.
    """
    cfg = OmegaConf.structured(schema)
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_absolute() and not path.exists():
            path = CONF_DIR / path
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            layer = OmegaConf.load(path)
        except Exception as exc:  # noqa: BLE001 - YAML errors come in many types
            raise ConfigError(f"cannot parse {path}: {exc}") from None
        cfg = _merge(cfg, layer, str(path))  # type: ignore[arg-type]
    if overrides:
        cfg = _merge(cfg, parse_overrides(overrides), "overrides")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"missing required config value(s): {', '.join(missing)} (give them as key=value)"
        )
    OmegaConf.set_readonly(cfg, True)
    return cfg  # type: ignore[return-value]


def to_container(cfg: Any) -> dict[str, Any]:
    """Plain, resolved ``dict`` of a config (dataclass or DictConfig)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = OmegaConf.structured(cfg)
    elif not OmegaConf.is_config(cfg):
        cfg = OmegaConf.create(cfg)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def config_hash(cfg: Any, exclude: tuple[str, ...] = ()) -> str:
    """Stable sha256 of a config's resolved values, ignoring top-level keys in ``exclude``.

    Stages exclude keys that do not change results (output folder, logging, worker counts), so
    a rerun with other logging settings still recognises its earlier outputs.
    """
    data = {k: v for k, v in to_container(cfg).items() if k not in exclude}
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def save_resolved(cfg: Any, out_dir: str | Path) -> Path:
    """Write ``resolved_config.yaml`` into ``out_dir`` atomically and return its path."""
    from hipt.io import atomic_write_text

    path = Path(out_dir) / "resolved_config.yaml"
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(to_container(cfg))))
    return path
