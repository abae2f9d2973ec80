"""Config of :class:`kdlab.methods.dgkd.DGKD`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.ranges import rng


@register_config("dgkd")
@dataclass(kw_only=True)
class DGKDConfig(MethodConfig):
    """The ``method:`` fields of method ``dgkd`` (:class:`kdlab.methods.dgkd.DGKD`)."""

    name: str = "dgkd"
    temperature: float = field(default=4.0, metadata=rng(gt=0))
    """Softmax temperature T."""
    ce_weight: float = field(default=0.1, metadata=rng(ge=0))
    """Weight of the cross-entropy term."""
    kd_weight: float = field(default=0.9, metadata=rng(ge=0))
    """Weight of every kept guide's KD term (the terms are summed, not averaged)."""
    drop_rate: float = field(default=0.0, metadata=rng(ge=0, lt=1))
    """Probability of dropping each guide at a step (one guide is kept when all would be dropped)."""
    drop_count: int = field(default=1, metadata=rng(ge=0, note="0 uses drop_rate"))
    """Drop exactly this many guides every step (the released code's ``--drop-num``, default 1); 0 to use
    ``drop_rate``. With one guide nothing is dropped."""
