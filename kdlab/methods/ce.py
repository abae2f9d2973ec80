"""``ce``: train a model alone with cross-entropy (teachers and student baselines).

Objective: ``CE(z_s, y)`` with optional label smoothing. Reads no teacher.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.methods import register_method
from kdlab.methods.base import DistillMethod
from kdlab.ranges import rng
from kdlab.types import LossOut, Needs, StepIO


@register_method("ce", description="cross-entropy only (no teacher): teachers and student baselines")
class CE(DistillMethod):
    """Plain supervised training."""

    mixed_labels = "soft"

    @dataclass(kw_only=True)
    class Config(MethodConfig):
        name: str = "ce"
        label_smoothing: float = field(default=0.0, metadata=rng(ge=0, lt=1))
        """Label smoothing epsilon of the cross-entropy."""

    def needs(self) -> Needs:
        return Needs(teacher=False)

    def loss(self, io: StepIO) -> LossOut:
        return LossOut({"ce": io.cross_entropy(io.s.logits, self.cfg.label_smoothing)})
