"""Shared entry-point plumbing for ``python -m pipelines.<stage> key=value ...``.

One vocabulary on every command line: ``SLIDES=``/``SLIDE=`` (slide files), ``ANNOTATIONS=``
(QuPath GeoJSON folder), ``TILES=`` (a tile output), ``FEATURES=`` (stores), ``COHORT=`` (cohort
CSV), ``OUT=``, ``CHECKPOINT256=`` / ``CHECKPOINT4K=`` (encoder weights), ``MODEL=`` (a trained
model file or folder) and ``ARCH=`` (a registry name). Old spellings keep working for one
release with a one-line warning.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hipt.config import load_config
from hipt.errors import ConfigError, HiptError

T = TypeVar("T")
log = logging.getLogger("hipt")

# Variables the Makefile itself uses; they reach the command line through MAKEOVERRIDES.
MAKE_ONLY = frozenset({"PYTHON", "VENV", "TASK"})
#: Lines of dependencies that are advertising, not information (Lightning's litmodels tip).
NOISE = ("litmodels", "💡 Tip")


class Deprecated:
    """An old command-line spelling: still accepted for one release, with one warning line.

    Args:
        key: the config key it now maps to, or None when it is ignored.
        message: the warning (what to use instead, or why it is no longer needed).
        values: old value -> new value, where the meaning of the values changed too.
    """

    def __init__(
        self, key: str | None, message: str, values: Mapping[str, str] | None = None
    ) -> None:
        self.key = key
        self.message = message
        self.values = dict(values or {})


def expand_shortcuts(
    argv: Sequence[str],
    shortcuts: Mapping[str, str],
    deprecated: Mapping[str, Deprecated] | None = None,
) -> list[str]:
    """Turn ``SLIDES=x`` style shortcuts into config keys; an unknown upper-case name is an error.

    Args:
        argv: ``key=value`` tokens as given on the command line.
        shortcuts: upper-case shortcut -> dotted config key (e.g. ``{"OUT": "out"}``).
        deprecated: old spellings (shortcuts or keys) -> what they mean now.
    """
    old = dict(deprecated or {})
    out: list[str] = []
    for tok in argv:
        key, sep, value = tok.partition("=")
        if sep and key in shortcuts and not key.isupper():  # a lower-case alias of a key
            out.append(f"{shortcuts[key]}={value}")
        elif sep and key in old:
            dep = old[key]
            log.warning("%s= is deprecated: %s", key, dep.message)
            if dep.key is not None:
                out.append(f"{dep.key}={dep.values.get(value.lower(), value)}")
        elif sep and key.isupper():
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


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in NOISE)


def setup_logging(verbose: bool = False) -> None:
    """Plain one-line log records on stderr: our lines, not dependencies' tips and warnings."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropNoise())
    # Lightning prints through handlers of its own (each line twice, tips included); its lines
    # go through ours instead, and its INFO chatter (TPU available, limit_train_batches ...)
    # is left out: the stages log the device and precision they resolved.
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    quiet = (
        *("PIL", "matplotlib", "urllib3", "fsspec", "numcodecs", "asyncio", "numexpr"),
        *("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"),
    )
    for noisy in quiet:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Deprecation notices of dependencies are for their developers, not for our users.
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)


def keep_caches_in(out: str | Path) -> None:
    """Point matplotlib's font cache at ``<out>/.cache`` (unless the user chose a place).

    Called before anything imports matplotlib, so a stage writes nothing outside its output
    folder (the cache is rebuilt in ~0.4 s).
    """
    if "MPLCONFIGDIR" not in os.environ:
        os.environ["MPLCONFIGDIR"] = str((Path(out) / ".cache" / "matplotlib").resolve())


def run_stage(
    schema: type[T],
    yaml_path: str | Path,
    run: Callable[[T], int],
    argv: Sequence[str] | None = None,
    shortcuts: Mapping[str, str] | None = None,
    deprecated: Mapping[str, Deprecated] | None = None,
) -> int:
    """Load the typed config from ``argv`` and call ``run``; map errors to one line + exit code.

    Returns:
        The process exit code: ``run``'s own, ``HiptError.exit_code`` (config errors: 2, locked
        output: 3, other hipt errors: 1) or 130 on Ctrl-C.
    """
    setup_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(schema, yaml_path, expand_shortcuts(args, shortcuts or {}, deprecated))
        out: Any = getattr(cfg, "out", None)
        if out:
            keep_caches_in(out)
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
