"""Config of :class:`kdlab.methods.srrl.SRRL`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.ranges import rng


@register_config("srrl")
@dataclass(kw_only=True)
class SRRLConfig(MethodConfig):
    """The ``method:`` fields of method ``srrl`` (:class:`kdlab.methods.srrl.SRRL`)."""

    name: str = "srrl"
    srrl_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the feature + softmax-regression term (``-b 1``)."""
    ce_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the cross-entropy (``-c 1``)."""
    kd_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the KD term (``-d 1``)."""
    temperature: float = field(default=4.0, metadata=rng(gt=0))
    """KD temperature."""
