"""Typed stage configs: dataclass schema <- conf/<stage>.yaml <- dotlist overrides.

A stage's config is a dataclass. Fields that never change what a stage produces (output folder,
logging, worker counts, progress bars) are declared with :func:`non_result`; fields that change
the numbers but may differ when an interrupted run is resumed (device count, precision) with
:func:`hardware`. :func:`config_hash` leaves the first out, so a rerun with other logging
settings still recognises its earlier outputs; this is the one place that knowledge lives.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from hipt.errors import ConfigError

T = TypeVar("T")

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
#: Field metadata key saying what a setting does to a stage's result.
ROLE = "hipt_role"
NON_RESULT = "non_result"
HARDWARE = "hardware"


def non_result(
    default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING
) -> Any:
    """A config field that never changes what the stage produces (paths, logging, workers)."""
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={ROLE: NON_RESULT}
    )


def hardware(
    default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING
) -> Any:
    """A field that changes numerics (devices, precision) but may change when a run resumes."""
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={ROLE: HARDWARE}
    )


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


@functools.cache
def keys_with_role(schema: type, role: str) -> tuple[str, ...]:
    """Dotted keys of ``schema`` (nested dataclasses walked) whose field declares ``role``.

    A nested dataclass field that declares the role stands for its whole subtree.
    """
    hints = typing.get_type_hints(schema)
    out: list[str] = []
    for f in dataclasses.fields(schema):
        if f.metadata.get(ROLE) == role:
            out.append(f.name)
            continue
        sub = hints.get(f.name)
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            out.extend(f"{f.name}.{k}" for k in keys_with_role(sub, role))
    return tuple(out)


def _flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys: list[str] = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            full = f"{prefix}{k!s}"
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


def resolve_yaml(yaml_path: str | Path) -> Path:
    """``yaml_path`` as given, or relative to the repository ``conf/`` folder."""
    path = Path(yaml_path)
    if not path.is_absolute() and not path.exists():
        path = CONF_DIR / path
    return path


def load_config(
    schema: type[T], yaml_path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """Build a typed config: ``schema`` defaults, then ``yaml_path``, then ``overrides``.

    Args:
        schema: a dataclass type whose fields are the valid keys.
        yaml_path: stage YAML (absolute, or relative to the repository ``conf/`` folder).
        overrides: dotlist strings such as ``["out=data/x", "trainer.max_steps=2"]``.

    Returns:
        An instance of ``schema`` (nested dataclasses, real Python types).

    Raises:
        ConfigError: unknown key, wrong type, missing mandatory value (``???``), unreadable YAML.
    """
    cfg = OmegaConf.structured(schema)
    if yaml_path is not None:
        path = resolve_yaml(yaml_path)
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
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:  # e.g. an interpolation that cannot resolve
        raise ConfigError(f"bad config: {exc}") from None


def to_container(cfg: Any) -> dict[str, Any]:
    """Plain, resolved ``dict`` of a config (dataclass instance, DictConfig or mapping)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = OmegaConf.structured(cfg)
    elif not OmegaConf.is_config(cfg):
        cfg = OmegaConf.create(cfg)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _drop(data: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if not rest:
        data.pop(head, None)
    elif isinstance(data.get(head), dict):
        _drop(data[head], rest)


def result_view(cfg: Any, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config as a dict without its :func:`non_result` keys (and the dotted ``exclude``)."""
    data = to_container(cfg)
    schema: type = type(cfg)
    declared = keys_with_role(schema, NON_RESULT) if dataclasses.is_dataclass(cfg) else ()
    for key in (*declared, *exclude):
        _drop(data, key)
    return data


def config_hash(cfg: Any, exclude: tuple[str, ...] = ()) -> str:
    """Stable sha256 of the settings that change a stage's result.

    Leaves out the fields the schema declares with :func:`non_result`, and the dotted keys in
    ``exclude``.
    """
    blob = json.dumps(result_view(cfg, exclude), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def save_resolved(cfg: Any, out_dir: str | Path) -> Path:
    """Write ``resolved_config.yaml`` into ``out_dir`` atomically and return its path."""
    from hipt.io import atomic_write_text

    path = Path(out_dir) / "resolved_config.yaml"
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(to_container(cfg))))
    return path
