"""Named registries of components (models, readers, tasks) that configs pick by key."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from hipt.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from snake_case keys to entries; registering a key twice is an error.

    Args:
        kind: what the registry holds, used in error messages (e.g. ``"model"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, key: str) -> Callable[[T], T]:
        """Decorator that stores ``obj`` under ``key``."""

        def deco(obj: T) -> T:
            self.add(key, obj)
            return obj

        return deco

    def add(self, key: str, obj: T) -> None:
        """Store ``obj`` under ``key``; a key registered twice is a programming error."""
        if key in self._items:
            raise ValueError(f"{self.kind} '{key}' is already registered")
        self._items[key] = obj

    def get(self, key: str) -> T:
        """The entry for ``key``.

        Raises:
            UnknownNameError: a configuration error (exit 2) naming the close and valid keys.
        """
        try:
            return self._items[key]
        except KeyError:
            close = difflib.get_close_matches(str(key), list(self._items), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} '{key}'{hint} (available: {', '.join(sorted(self._items))})"
            ) from None

    def keys(self) -> list[str]:
        """Sorted registered keys."""
        return sorted(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
