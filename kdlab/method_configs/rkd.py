"""Config of :class:`kdlab.methods.rkd.RKD`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.method_configs import register_config
from kdlab.method_configs._feature import FeatureConfig
from kdlab.ranges import rng


@register_config("rkd")
@dataclass(kw_only=True)
class RKDConfig(FeatureConfig):
    """The ``method:`` fields of method ``rkd`` (:class:`kdlab.methods.rkd.RKD`)."""

    name: str = "rkd"
    rkd_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the whole RKD term."""
    distance_weight: float = field(default=25.0, metadata=rng(ge=0))
    """Weight of the distance potential inside the RKD term."""
    angle_weight: float = field(default=50.0, metadata=rng(ge=0))
    """Weight of the angle potential inside the RKD term."""
    student_tap: str = "pool"
    """Student embedding (flattened if spatial)."""
    teacher_tap: str = "pool"
    """Teacher embedding."""
