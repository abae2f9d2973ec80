"""Config of :class:`kdlab.methods.at.AT`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.method_configs import register_config
from kdlab.method_configs._feature import FeatureConfig
from kdlab.ranges import rng


@register_config("at")
@dataclass(kw_only=True)
class ATConfig(FeatureConfig):
    """The ``method:`` fields of method ``at`` (:class:`kdlab.methods.at.AT`)."""

    name: str = "at"
    at_weight: float = field(default=1000.0, metadata=rng(ge=0))
    """Weight of the attention-transfer term."""
    p: float = field(default=2.0, metadata=rng(gt=0))
    """Power of the attention map ``mean_c f^p``."""
    student_taps: list[str] = field(default_factory=list)
    """Student maps, paired with ``teacher_taps`` by position; empty: every stage (stage1..stageN)."""
    teacher_taps: list[str] = field(default_factory=list)
    """Teacher maps; empty: every stage."""
