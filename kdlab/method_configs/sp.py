"""Config of :class:`kdlab.methods.sp.SP`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.method_configs import register_config
from kdlab.method_configs._feature import LAST_STAGE, FeatureConfig
from kdlab.ranges import rng


@register_config("sp")
@dataclass(kw_only=True)
class SPConfig(FeatureConfig):
    """The ``method:`` fields of method ``sp`` (:class:`kdlab.methods.sp.SP`)."""

    name: str = "sp"
    sp_weight: float = field(default=3000.0, metadata=rng(ge=0))
    """Weight of the similarity-preserving term."""
    student_tap: str = LAST_STAGE
    """Student map; ``last`` is the last stage (stageN)."""
    teacher_tap: str = LAST_STAGE
    """Teacher map; ``last`` is the last stage (stageN)."""
