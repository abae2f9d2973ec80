"""Config of :class:`kdlab.methods.nst.NST`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.method_configs import register_config
from kdlab.method_configs._feature import FeatureConfig
from kdlab.ranges import rng


@register_config("nst")
@dataclass(kw_only=True)
class NSTConfig(FeatureConfig):
    """The ``method:`` fields of method ``nst`` (:class:`kdlab.methods.nst.NST`)."""

    name: str = "nst"
    nst_weight: float = field(default=50.0, metadata=rng(ge=0))
    """Weight of the MMD term."""
    student_taps: list[str] = field(default_factory=list)
    """Student maps, paired with ``teacher_taps`` by position; empty: every stage (stage1..stageN)."""
    teacher_taps: list[str] = field(default_factory=list)
    """Teacher maps; empty: every stage."""
