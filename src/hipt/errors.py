"""Exception types whose message is the one line a user needs: what failed, where, and the fix."""

from __future__ import annotations

from pathlib import Path


class HiptError(Exception):
    """Base class for errors that the pipelines report as one clear line and an exit code."""

    exit_code = 1


class ConfigError(HiptError):
    """A configuration key is unknown, missing or has an invalid value."""

    exit_code = 2


class UnknownNameError(ConfigError, KeyError):
    """A registry (models, tasks, readers) has no entry of that name; a configuration error."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SlideError(HiptError):
    """A slide cannot be opened or read; the batch records it and goes on."""


class StaleOutputError(HiptError):
    """An output exists but was made from other inputs or settings than the ones requested."""


class DamagedStoreError(StaleOutputError):
    """A feature store's bytes are damaged (checksum or decode failure): it must be recomputed."""


class LockedError(HiptError):
    """Another live run holds the output folder."""

    exit_code = 3


def one_line(exc: BaseException, path: str | Path | None = None) -> str:
    """An exception as one log line, naming ``path`` when the message does not already.

    Our own errors (:class:`HiptError`) read as written; others keep their type name so that
    ``ValueError: ...`` from a library stays recognisable.
    """
    msg = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, HiptError):
        msg = f"{type(exc).__name__}: {msg}"
    if path is None:
        return msg
    text = str(path)
    return msg if text in msg or Path(text).name in msg else f"{text}: {msg}"
