"""Config of :class:`kdlab.methods.kd.KD`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.ranges import rng


@register_config("kd")
@dataclass(kw_only=True)
class KDConfig(MethodConfig):
    """The ``method:`` fields of method ``kd`` (:class:`kdlab.methods.kd.KD`)."""

    name: str = "kd"
    temperature: float = field(default=4.0, metadata=rng(gt=0))
    """Softmax temperature T."""
    ce_weight: float = field(default=0.1, metadata=rng(ge=0))
    """Weight of the cross-entropy term."""
    kd_weight: float = field(default=0.9, metadata=rng(ge=0))
    """Weight of the KD term."""
    standardize: bool = False
    """Logit standardisation of both logit sets before the temperature."""
    label_smoothing: float = field(default=0.0, metadata=rng(ge=0, lt=1))
    """Label smoothing epsilon of the cross-entropy term."""
    aux_weight: float = field(default=0.0, metadata=rng(ge=0))
    """Weight of the same terms on the models' auxiliary heads (``aux`` tap; segmentation models), 0 for none."""
