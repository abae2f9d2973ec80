"""Config of :class:`kdlab.methods.mt_kd.MeanTeacherKD`: torch-free, so a run config is read without importing the
methods (:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.ranges import rng


@register_config("mt_kd")
@dataclass(kw_only=True)
class MeanTeacherKDConfig(MethodConfig):
    """The ``method:`` fields of method ``mt_kd`` (:class:`kdlab.methods.mt_kd.MeanTeacherKD`)."""

    name: str = "mt_kd"
    temperature: float = field(default=4.0, metadata=rng(gt=0))
    """Softmax temperature T."""
    ce_weight: float = field(default=0.1, metadata=rng(ge=0))
    """Weight of the cross-entropy term."""
    kd_weight: float = field(default=0.9, metadata=rng(ge=0))
    """Weight of the KD term against the averaged teacher distribution."""
