"""DINO pretraining of either HIPT level: ``python -m pipelines.pretrain level=256|4k OUT=... ...``.

``level=256`` loads ``conf/pretrain_256.yaml`` (needs ``TILES=``), ``level=4k`` loads
``conf/pretrain_4k.yaml`` (needs ``FEATURES=``); ``config=<yaml>`` picks another file (e.g.
``config=tests/pretrain_4k_tiny.yaml``). Every other ``key=value`` overrides the config.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hipt.cli import main_guard, run_stage
from hipt.pretrain.config import PretrainConfig

SHORTCUTS = {"TILES": "data.tiles", "FEATURES": "data.features", "OUT": "out"}
LEVEL_YAML = {"256": "pretrain_256.yaml", "4k": "pretrain_4k.yaml"}


def run(cfg: PretrainConfig) -> int:
    """Run the stage; imported here so that config errors answer before torch is loaded."""
    from hipt.pretrain.runner import run as run_pretrain

    return run_pretrain(cfg)


def pick_yaml(argv: list[str]) -> tuple[str, list[str]]:
    """The YAML named by ``config=`` (removed from argv) or by the last ``level=`` token."""
    yaml, rest, level = None, [], "256"
    for tok in argv:
        key, _, value = tok.partition("=")
        if key == "config":
            yaml = value
            continue
        if key == "level":
            level = value.lower()
        rest.append(tok)
    return yaml or LEVEL_YAML.get(level, LEVEL_YAML["256"]), rest


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pretrain stage with ``key=value`` overrides; return the exit code."""
    yaml, args = pick_yaml(list(sys.argv[1:] if argv is None else argv))
    return run_stage(PretrainConfig, yaml, run, args, shortcuts=SHORTCUTS)


if __name__ == "__main__":
    main_guard(main())
