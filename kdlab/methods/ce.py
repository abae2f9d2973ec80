"""``ce``: train a model alone with cross-entropy (teachers and student baselines).

Objective: ``CE(z_s, y)`` with optional label smoothing. Reads no teacher.

Models with their own task losses (detection: ``"loss.*"`` taps): the sum of those losses instead
(:meth:`kdlab.types.StepIO.task_loss`), still reported as ``ce``.

Dense outputs (segmentation): the cross-entropy over labelled pixels of the logits upsampled to the label size, plus
``aux_weight * CE(aux, y)`` on the auxiliary head (the CIRKD / DIST_KD recipe: 0.4).
"""

from __future__ import annotations

from kdlab.method_configs.ce import CEConfig
from kdlab.methods import register_method
from kdlab.methods._dense import aux_needs, with_aux
from kdlab.methods.base import DistillMethod
from kdlab.types import LossOut, Needs, StepIO


@register_method("ce", description="cross-entropy only (no teacher): teachers and student baselines")
class CE(DistillMethod):
    """Plain supervised training."""

    dense_outputs = True

    detection_outputs = True

    mixed_labels = "soft"

    Config = CEConfig

    def needs(self) -> Needs:
        return aux_needs(Needs(teacher=False), self.cfg.aux_weight)

    def loss(self, io: StepIO) -> LossOut:
        return with_aux(self._loss, io, self.cfg.aux_weight)

    def _loss(self, io: StepIO) -> LossOut:
        return LossOut({"ce": io.task_loss(io.s.logits, self.cfg.label_smoothing)})
