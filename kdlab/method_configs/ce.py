"""Config of :class:`kdlab.methods.ce.CE`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.ranges import rng


@register_config("ce")
@dataclass(kw_only=True)
class CEConfig(MethodConfig):
    """The ``method:`` fields of method ``ce`` (:class:`kdlab.methods.ce.CE`)."""

    name: str = "ce"
    label_smoothing: float = field(default=0.0, metadata=rng(ge=0, lt=1))
    """Label smoothing epsilon of the cross-entropy."""
    aux_weight: float = field(default=0.0, metadata=rng(ge=0))
    """Weight of the same loss on the model's auxiliary head (``aux`` tap; segmentation models), 0 for none."""
