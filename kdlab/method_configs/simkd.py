"""Config of :class:`kdlab.methods.simkd.SimKD`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kdlab.method_configs import register_config
from kdlab.method_configs._feature import FeatureConfig
from kdlab.ranges import rng


@register_config("simkd")
@dataclass(kw_only=True)
class SimKDConfig(FeatureConfig):
    """The ``method:`` fields of method ``simkd`` (:class:`kdlab.methods.simkd.SimKD`)."""

    name: str = "simkd"
    simkd_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the projector terms (the reference's ``-b 1``)."""
    ce_weight: float = field(default=0.0, metadata=rng(ge=0))
    """Weight of the cross-entropy on the student's own logits (``-c 0``)."""
    kd_weight: float = field(default=0.0, metadata=rng(ge=0))
    """Weight of KD on the student's own logits (``-d 0``)."""
    factor: int = field(default=2, metadata=rng(ge=1))
    """Projector inner width is teacher channels // factor (2, 4, 8 in the reference's README)."""
    projectors: Literal["last", "multi", "all"] = "last"
    """``last`` (SimKD), ``multi`` (also after ~2/3 of the student's stages), ``all`` (after every stage)."""
    loss: Literal["l2", "kl"] = "l2"
    """``l2``: MSE on the last projector's map; ``kl``: KL of predictions through the reused classifier."""
    temperature: float = field(default=4.0, metadata=rng(gt=0))
    """Softmax temperature of ``loss: kl`` and of the KD term."""
    label_gating: bool = False
    """Learn from a sample only if the teacher classifies it correctly (teacher-dependent terms)."""

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"method.factor must be a positive integer (2, 4 or 8 in SimKD), got {self.factor}")
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be positive, got {self.temperature}")
        for field_name in ("simkd_weight", "ce_weight", "kd_weight"):
            if getattr(self, field_name) < 0:
                raise ValueError(f"method.{field_name} must be >= 0, got {getattr(self, field_name)}")
