"""Config of :class:`kdlab.methods.dkd.DKD`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.ranges import rng


@register_config("dkd")
@dataclass(kw_only=True)
class DKDConfig(MethodConfig):
    """The ``method:`` fields of method ``dkd`` (:class:`kdlab.methods.dkd.DKD`)."""

    name: str = "dkd"
    ce_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the cross-entropy term."""
    alpha: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of TCKD (target-class KD)."""
    beta: float = field(default=8.0, metadata=rng(ge=0))
    """Weight of NCKD (non-target-class KD); the recipes override it per pair."""
    temperature: float = field(default=4.0, metadata=rng(gt=0))
    """Softmax temperature T (1 on ImageNet)."""
    warmup_epochs: int | None = field(default=None, metadata=rng(ge=0, note="0: no ramp"))
    """The DKD term ramps linearly to full weight over this many epochs (1 on ImageNet, 0 for none); None: 1/12 of
    ``train.epochs`` (the reference's 20 of 240; :mod:`kdlab.schedule`)."""
    standardize: bool = False
    """Logit standardisation of both logit sets before the temperature."""
    label_smoothing: float = field(default=0.0, metadata=rng(ge=0, lt=1))
    """Label smoothing epsilon of the cross-entropy term."""
