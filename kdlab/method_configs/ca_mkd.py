"""Config of :class:`kdlab.methods.ca_mkd.CAMKD`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.method_configs._feature import LAST_STAGE
from kdlab.ranges import rng


@register_config("ca_mkd")
@dataclass(kw_only=True)
class CAMKDConfig(MethodConfig):
    """The ``method:`` fields of method ``ca_mkd`` (:class:`kdlab.methods.ca_mkd.CAMKD`)."""

    name: str = "ca_mkd"
    temperature: float = field(default=4.0, metadata=rng(gt=0))
    """Softmax temperature T."""
    ce_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the cross-entropy term (the reference's ``-r 1``)."""
    kd_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the confidence-weighted KD term (``-a 1``)."""
    feature_weight: float = field(default=50.0, metadata=rng(ge=0))
    """Weight of the confidence-weighted feature term (``-b 50``); 0 builds no adapters."""
    student_tap: str = LAST_STAGE
    """Student map fed to the adapters (``last``: its last stage map, the reference's ``feat[-2]``)."""
    teacher_tap: str = LAST_STAGE
    """Teacher map the adapters regress (``last``: each teacher's last stage map)."""
    feature_start_epoch: int = field(default=1, metadata=rng(ge=0))
    """The feature term is 0 before this (0-based) epoch (the reference skips it in its first epoch)."""
    divide_by_teachers: bool = True
    """Divide both weighted sums by the teacher count M as the reference does (see Deviations)."""
