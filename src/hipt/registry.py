"""Named registries of components (models, readers, tasks) that configs pick by key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from snake_case keys to factories; registering a key twice is an error.

    Args:
        kind: what the registry holds, used in error messages (e.g. ``"model"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, key: str) -> Callable[[T], T]:
        """Decorator that stores ``obj`` under ``key``."""

        def deco(obj: T) -> T:
            if key in self._items:
                raise KeyError(f"{self.kind} '{key}' is already registered")
            self._items[key] = obj
            return obj

        return deco

    def get(self, key: str) -> T:
        """Return the entry for ``key`` or raise a ``KeyError`` listing the valid keys."""
        try:
            return self._items[key]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} '{key}'; available: {', '.join(sorted(self._items))}"
            ) from None

    def keys(self) -> list[str]:
        """Sorted registered keys."""
        return sorted(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
