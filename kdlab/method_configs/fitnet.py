"""Config of :class:`kdlab.methods.fitnet.FitNet`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.method_configs import register_config
from kdlab.method_configs._feature import FeatureConfig
from kdlab.ranges import rng


@register_config("fitnet")
@dataclass(kw_only=True)
class FitNetConfig(FeatureConfig):
    """The ``method:`` fields of method ``fitnet`` (:class:`kdlab.methods.fitnet.FitNet`)."""

    name: str = "fitnet"
    hint_weight: float = field(default=100.0, metadata=rng(ge=0))
    """Weight of the hint (MSE) term."""
    student_tap: str = "stage2"
    """Student tap of the hint (the references' hint layer 2); ``last`` is the last stage map."""
    teacher_tap: str = "stage2"
    """Teacher tap of the hint."""
