"""Config of :class:`kdlab.methods.cc.CC`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.method_configs import register_config
from kdlab.method_configs._feature import FeatureConfig
from kdlab.ranges import rng


@register_config("cc")
@dataclass(kw_only=True)
class CCConfig(FeatureConfig):
    """The ``method:`` fields of method ``cc`` (:class:`kdlab.methods.cc.CC`)."""

    name: str = "cc"
    cc_weight: float = field(default=0.02, metadata=rng(ge=0))
    """Weight of the correlation-congruence term."""
    embed_dim: int = field(default=128, metadata=rng(ge=1))
    """Output size of the two linear embeddings (RepDistiller's ``--feat_dim``)."""
    student_tap: str = "pool"
    """Student feature that is embedded (flattened if spatial)."""
    teacher_tap: str = "pool"
    """Teacher feature that is embedded."""
