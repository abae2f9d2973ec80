"""Config of :class:`kdlab.methods.mlkd.MLKD`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.ranges import rng


@register_config("mlkd")
@dataclass(kw_only=True)
class MLKDConfig(MethodConfig):
    """The ``method:`` fields of method ``mlkd`` (:class:`kdlab.methods.mlkd.MLKD`)."""

    name: str = "mlkd"
    ce_weight: float = field(default=0.1, metadata=rng(ge=0))
    """Weight of the cross-entropy term (applied to both views' CE)."""
    kd_weight: float = field(default=0.9, metadata=rng(ge=0))
    """Weight of every distillation term (instance, class, batch; ImageNet: CE 0.5, KD 0.5)."""
    temperature: float = field(default=4.0, metadata=rng(gt=0))
    """The configurable temperature (1 on ImageNet)."""
    extra_temperatures: list[float] = field(default_factory=lambda: [3.0, 5.0, 2.0, 6.0], metadata=rng(gt=0))
    """The other temperatures of "prediction augmentation" (hard-coded in the reference)."""
    standardize: bool = False
    """Logit standardisation of the instance-level KD terms (logit-standardisation fork)."""
    label_smoothing: float = field(default=0.0, metadata=rng(ge=0, lt=1))
    """Label smoothing epsilon of the cross-entropy terms."""
    reference_quirks: bool = False
    """Reproduce the released code exactly (masks reduced to constants, weak logits in two strong terms)."""
