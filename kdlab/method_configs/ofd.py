"""Config of :class:`kdlab.methods.ofd.OFD`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.ranges import rng


@register_config("ofd")
@dataclass(kw_only=True)
class OFDConfig(MethodConfig):
    """The ``method:`` fields of method ``ofd`` (:class:`kdlab.methods.ofd.OFD`)."""

    name: str = "ofd"
    ofd_weight: float = field(default=0.001, metadata=rng(ge=0))
    """Weight of the distillation term (mdistiller's ``FEAT_WEIGHT``)."""
    ce_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the cross-entropy."""
