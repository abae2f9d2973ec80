"""Distillation methods: every method registers its class in :data:`kdlab.registry.METHODS` under its registry name.

Importing this package imports every method module (the registry does so on its first lookup).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from kdlab.methods.base import AuxObjective, BuildContext, DistillMethod, PrepareContext
from kdlab.registry import METHODS


def register_method(name: str, **meta: object) -> Callable[[type[DistillMethod]], type[DistillMethod]]:
    """Class decorator registering a :class:`DistillMethod` under ``name``.

    The class's ``Config.name`` default must equal ``name`` (checked) so configs round-trip.
    """

    def deco(cls: type[DistillMethod]) -> type[DistillMethod]:
        default = cls.Config().name if _constructible(cls.Config) else None
        if default is not None and default != name:
            raise ValueError(f"{cls.__name__}.Config.name defaults to {default!r}, expected {name!r}")
        METHODS.add(name, cls, **meta)
        return cls

    return deco


def _constructible(cfg_cls: type) -> bool:
    try:
        cfg_cls()
    except TypeError:
        return False
    return True


# Every module of this package except `base` registers its method(s) on import: a new method file joins
# the registry (and the generated tests, the CLI and the demo) by existing.
for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")


def build_method(cfg, ctx: BuildContext) -> DistillMethod:
    """Instantiate the method selected by ``cfg.name``."""
    return METHODS.get(cfg.name)(cfg, ctx)


__all__ = [
    "METHODS",
    "AuxObjective",
    "BuildContext",
    "DistillMethod",
    "PrepareContext",
    "build_method",
    "register_method",
]
