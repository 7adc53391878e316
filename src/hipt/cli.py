"""Shared entry-point plumbing for ``python -m pipelines.<stage> key=value ...``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hipt.config import load_config
from hipt.errors import ConfigError, HiptError

T = TypeVar("T")
log = logging.getLogger("hipt")

# Variables the Makefile itself uses; they reach the command line through MAKEOVERRIDES.
MAKE_ONLY = frozenset({"PYTHON", "VENV", "TASK"})


def expand_shortcuts(argv: Sequence[str], shortcuts: Mapping[str, str]) -> list[str]:
    """Turn ``SLIDES=x`` style shortcuts into config keys; an unknown upper-case name is an error.

    Args:
        argv: ``key=value`` tokens as given on the command line.
        shortcuts: upper-case shortcut -> dotted config key (e.g. ``{"OUT": "out"}``).
    """
    out: list[str] = []
    for tok in argv:
        key, sep, value = tok.partition("=")
        if sep and key.isupper():
            if key in shortcuts:
                out.append(f"{shortcuts[key]}={value}")
            elif key in MAKE_ONLY:
                continue
            else:
                valid = ", ".join(sorted(shortcuts)) or "none"
                raise ConfigError(f"unknown shortcut '{key}' (this stage takes: {valid})")
        else:
            out.append(tok)
    return out


def setup_logging(verbose: bool = False) -> None:
    """Plain one-line log records on stderr."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("PIL", "matplotlib", "urllib3", "fsspec", "numcodecs", "asyncio", "numexpr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_stage(
    schema: type[T],
    yaml_path: str | Path,
    run: Callable[[T], int],
    argv: Sequence[str] | None = None,
    shortcuts: Mapping[str, str] | None = None,
) -> int:
    """Load the typed config from ``argv`` and call ``run``; map errors to one line + exit code.

    Returns:
        The process exit code: ``run``'s own, ``HiptError.exit_code`` (config errors: 2, locked
        output: 3, other hipt errors: 1) or 130 on Ctrl-C.
    """
    setup_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(schema, yaml_path, expand_shortcuts(args, shortcuts or {}))
        return run(cfg)
    except HiptError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted; completed outputs are kept, partial ones were discarded")
        return 130


def main_guard(code: Any) -> None:
    """``sys.exit`` with the stage's return code."""
    sys.exit(int(code))
