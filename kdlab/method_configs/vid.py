"""Config of :class:`kdlab.methods.vid.VID`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.ranges import rng


@register_config("vid")
@dataclass(kw_only=True)
class VIDConfig(MethodConfig):
    """The ``method:`` fields of method ``vid`` (:class:`kdlab.methods.vid.VID`)."""

    name: str = "vid"
    vid_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the summed per-stage negative log-likelihoods (the reference's ``-b 1``)."""
    ce_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the cross-entropy."""
    init_variance: float = field(default=5.0, metadata=rng(gt=0))
    """Initial variance of every channel."""
    eps: float = field(default=1e-5, metadata=rng(gt=0))
    """Variance floor."""
