"""The ``Config`` dataclass of every distillation method, in modules that import no torch.

A method's config (the ``method:`` section of a run config) is plain data: its fields, defaults, ranges and docs. It
lives here, one module per method module of :mod:`kdlab.methods` (``kdlab/method_configs/kd.py`` for
``kdlab/methods/kd.py``), registered under the method's registry name with :func:`register_config`; the method class
refers to it (``Config = KDConfig``). The run config (:mod:`kdlab.config`) resolves ``method.name`` through
:data:`kdlab.registry.METHOD_CONFIGS`, whose first lookup imports this package only: ``kdlab show CONFIG`` and the
config checks of every command read a config without importing torch or the methods.

Every module of this package whose name does not start with ``_`` is imported with it; a module imports only the
standard library, :mod:`kdlab.config`, :mod:`kdlab.ranges` and other modules of this package (tested:
``tests/test_imports.py``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from kdlab.config import MethodConfig
from kdlab.registry import METHOD_CONFIGS


def register_config(name: str) -> Callable[[type[MethodConfig]], type[MethodConfig]]:
    """Class decorator registering the ``Config`` dataclass of method ``name`` in :data:`METHOD_CONFIGS`.

    The class's ``name`` default must equal ``name`` (checked), so configs round-trip.
    """

    def deco(cls: type[MethodConfig]) -> type[MethodConfig]:
        default = cls().name
        if default != name:
            raise ValueError(f"{cls.__name__}.name defaults to {default!r}, expected {name!r}")
        METHOD_CONFIGS.add(name, cls)
        return cls

    return deco


for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")


__all__ = ["METHOD_CONFIGS", "register_config"]
