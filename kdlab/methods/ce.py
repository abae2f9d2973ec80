"""``ce``: train a model alone with cross-entropy (teachers and student baselines).

Objective: ``CE(z_s, y)`` with optional label smoothing. Reads no teacher.

Dense outputs (segmentation): the cross-entropy over labelled pixels of the logits upsampled to the label size, plus
``aux_weight * CE(aux, y)`` on the auxiliary head (the CIRKD / DIST_KD recipe: 0.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.methods import register_method
from kdlab.methods._dense import aux_needs, with_aux
from kdlab.methods.base import DistillMethod
from kdlab.ranges import rng
from kdlab.types import LossOut, Needs, StepIO


@register_method("ce", description="cross-entropy only (no teacher): teachers and student baselines")
class CE(DistillMethod):
    """Plain supervised training."""

    dense_outputs = True

    mixed_labels = "soft"

    @dataclass(kw_only=True)
    class Config(MethodConfig):
        name: str = "ce"
        label_smoothing: float = field(default=0.0, metadata=rng(ge=0, lt=1))
        """Label smoothing epsilon of the cross-entropy."""
        aux_weight: float = field(default=0.0, metadata=rng(ge=0))
        """Weight of the same loss on the model's auxiliary head (``aux`` tap; segmentation models), 0 for none."""

    def needs(self) -> Needs:
        return aux_needs(Needs(teacher=False), self.cfg.aux_weight)

    def loss(self, io: StepIO) -> LossOut:
        return with_aux(self._loss, io, self.cfg.aux_weight)

    def _loss(self, io: StepIO) -> LossOut:
        return LossOut({"ce": io.cross_entropy(io.s.logits, self.cfg.label_smoothing)})
