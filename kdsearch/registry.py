"""One small registry helper for every named plug-in: families, proxies, losses, samplers, data loaders,
export formats (as timm's ``_registry.py``): registering a name twice warns, and a miss raises the
stage's own error naming close matches and every choice.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kdsearch._util import suggest
from kdsearch.exceptions import KdsearchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → object. ``kind`` words the messages ("proxy", "loss"); ``error`` is the class a miss raises."""

    def __init__(self, kind: str, error: type[KdsearchError] = KdsearchError, *, hint: str = ""):
        self.kind, self.error, self.hint = kind, error, hint
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str | None = None, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")``, or bare ``@REG.register()`` to use the object's ``__name__``."""

        def wrap(obj: T) -> T:
            self.add(name or obj.__name__, obj, aliases=aliases)
            return obj

        return wrap

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = ()) -> None:
        if name in self._items and self._items[name] is not obj:
            old = self._items[name]
            warnings.warn(
                f"{self.kind} {name!r} is registered twice: {_where(obj)} replaces {_where(old)}.", RuntimeWarning, stacklevel=3
            )
        self._items[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases; raises the stage's error on a miss."""
        name = self._aliases.get(name, name)
        if name not in self._items:
            raise self.error(
                f"Unknown {self.kind} {name!r};{suggest(name, self.names())} available: {', '.join(self.names())}.{self.hint}"
            )
        return name

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def _where(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


__all__ = ["Registry"]
