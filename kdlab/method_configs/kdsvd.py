"""Config of :class:`kdlab.methods.kdsvd.KDSVD`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kdlab.method_configs import register_config
from kdlab.method_configs._feature import FeatureConfig
from kdlab.ranges import rng


@register_config("kdsvd")
@dataclass(kw_only=True)
class KDSVDConfig(FeatureConfig):
    """The ``method:`` fields of method ``kdsvd`` (:class:`kdlab.methods.kdsvd.KDSVD`)."""

    name: str = "kdsvd"
    kdsvd_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the KDSVD term."""
    k: int = field(default=1, metadata=rng(ge=1))
    """Number of the teacher's leading singular vectors (the student keeps k + 3 candidates)."""
    layout: Literal["channels", "width"] = "channels"
    """``channels``: maps as [H*W, C] (paper, RepDistiller); ``width``: as [C*H, W] (mdistiller)."""
    student_taps: list[str] = field(default_factory=list)
    """Student maps, paired with ``teacher_taps`` by position; empty: every stage (stage1..stageN)."""
    teacher_taps: list[str] = field(default_factory=list)
    """Teacher maps; empty: every stage."""
