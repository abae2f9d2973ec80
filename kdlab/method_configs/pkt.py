"""Config of :class:`kdlab.methods.pkt.PKT`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.method_configs import register_config
from kdlab.method_configs._feature import FeatureConfig
from kdlab.ranges import rng


@register_config("pkt")
@dataclass(kw_only=True)
class PKTConfig(FeatureConfig):
    """The ``method:`` fields of method ``pkt`` (:class:`kdlab.methods.pkt.PKT`)."""

    name: str = "pkt"
    pkt_weight: float = field(default=30000.0, metadata=rng(ge=0))
    """Weight of the PKT term."""
    student_tap: str = "pool"
    """Student embedding (flattened if spatial)."""
    teacher_tap: str = "pool"
    """Teacher embedding."""
