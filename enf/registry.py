"""Name -> builder registries, so that models and data sets plug in without touching the training loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from enf.errors import EnfError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of entries, each with optional default settings that the config resolver merges in."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._defaults: dict[str, dict[str, Any]] = {}

    def register(self, name: str, defaults: dict[str, Any] | None = None) -> Callable[[T], T]:
        """Decorator: register `obj` under `name` with `defaults` (a nested dict of config overrides)."""

        def wrap(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            self._defaults[name] = dict(defaults or {})
            return obj

        return wrap

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise EnfError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def defaults(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._defaults[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
