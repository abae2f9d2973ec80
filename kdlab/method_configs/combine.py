"""Config of :class:`kdlab.methods.combine.Sum`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.method_configs.kd import KDConfig
from kdlab.ranges import rng


@register_config("sum")
@dataclass(kw_only=True)
class SumConfig(MethodConfig):
    """The ``method:`` fields of method ``sum`` (:class:`kdlab.methods.combine.Sum`)."""

    name: str = "sum"
    terms: list[MethodConfig] = field(default_factory=lambda: [KDConfig()])
    """The methods to add up (each a full method config with its own ``name``)."""
    weights: list[float] = field(default_factory=list, metadata=rng(ge=0))
    """One weight per entry of ``terms``; empty: all 1."""
