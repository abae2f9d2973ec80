"""A small generic name -> object registry used for models, methods and datasets."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown name was asked of a registry; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def closest(name: str, candidates: list[str] | tuple[str, ...]) -> str | None:
    """The candidate most similar to ``name``, or None when nothing is close."""
    hits = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return hits[0] if hits else None


class Registry(Generic[T]):
    """Maps registry names (lower-case, e.g. ``"resnet8x4"``, ``"kd"``) to objects.

    Args:
        kind: what the registry holds, used in error messages (``"model"``, ``"method"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict] = {}

    def register(self, name: str, **meta: object) -> Callable[[T], T]:
        """Decorator registering an object under ``name`` with optional metadata."""

        def deco(obj: T) -> T:
            self.add(name, obj, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, **meta: object) -> None:
        """Register ``obj`` under ``name``; registering a name twice is an error."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        self._meta[name] = dict(meta)

    def get(self, name: str) -> T:
        """The object registered as ``name``; an unknown name lists the available ones."""
        try:
            return self._items[name]
        except KeyError:
            hint = closest(name, self.names())
            did = f" Did you mean {hint!r}?" if hint else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{did} Available {self.kind}s: {', '.join(self.names())}"
            ) from None

    def meta(self, name: str) -> dict:
        """Metadata given at registration."""
        self.get(name)
        return self._meta[name]

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
