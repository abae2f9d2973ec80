"""A small generic name -> object registry used for models, methods and datasets.

A registry may name the package whose modules register its entries (``Registry("method", package="kdlab.methods")``):
the first question asked of it (``get``, ``names``, ``in``, ...) imports that package by name. Code that only looks
entries up (the run config resolving ``method.name``) therefore depends on this module alone, never on the package
that fills it, and the package depends on this module: the import graph has no cycle.
"""

from __future__ import annotations

import difflib
import importlib
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
        package: dotted name of the package whose import registers the entries; imported on the first lookup.
    """

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._loaded = package is None
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict] = {}

    def _load(self) -> None:
        """Import :attr:`package` once (its modules call :meth:`add`); lookups during that import see what is there."""
        if self._loaded:
            return
        self._loaded = True
        try:
            importlib.import_module(self.package)
        except BaseException:
            self._loaded = False
            raise

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
        self._load()
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
        self._load()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(self._items)

    def __len__(self) -> int:
        self._load()
        return len(self._items)


#: Every distillation method, by registry name: filled by the modules of :mod:`kdlab.methods` (each class registers
#: with :func:`kdlab.methods.register_method`).
METHODS: Registry[type] = Registry("method", package="kdlab.methods")

#: The ``Config`` dataclass of every method, by the method's registry name: filled by the torch-free modules of
#: :mod:`kdlab.method_configs` (:func:`kdlab.method_configs.register_config`). The run config resolves
#: ``method.name`` here, so reading a config imports neither torch nor :mod:`kdlab.methods`.
METHOD_CONFIGS: Registry[type] = Registry("method", package="kdlab.method_configs")
