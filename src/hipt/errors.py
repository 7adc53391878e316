"""Exception types whose message is the one line a user needs: what failed, where, and the fix."""

from __future__ import annotations


class HiptError(Exception):
    """Base class for errors that the pipelines report as one clear line and an exit code."""

    exit_code = 1


class ConfigError(HiptError):
    """A configuration key is unknown, missing or has an invalid value."""

    exit_code = 2


class SlideError(HiptError):
    """A slide cannot be opened or read; the batch records it and goes on."""


class StaleOutputError(HiptError):
    """An output exists but was made from other inputs or settings than the ones requested."""


class LockedError(HiptError):
    """Another live run holds the output folder."""

    exit_code = 3
