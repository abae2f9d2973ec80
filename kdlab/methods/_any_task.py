"""The shared shape of the logit methods that distil the outputs of every task: image classification, dense
prediction (segmentation) and object detection (:class:`AnyTaskLogitMethod`; ``kd`` and ``dist``).

Such a method builds a :class:`~kdlab.methods._detection.DetectionPair` when the student is a detector and refuses
the settings that have no detection form; its step dispatches to the detection form of its term or to the
classification/dense form, which adds the same terms on the auxiliary heads (``aux_weight``,
:mod:`kdlab.methods._dense`). The methods keep only their math: :meth:`AnyTaskLogitMethod.logit_loss` and
:meth:`AnyTaskLogitMethod.detection_loss`.
"""

from __future__ import annotations

from kdlab.config import MethodConfig
from kdlab.methods._dense import aux_needs, with_aux
from kdlab.methods._detection import DetectionPair, refuse
from kdlab.methods.base import BuildContext, DistillMethod
from kdlab.types import LossOut, Needs, StepIO


class AnyTaskLogitMethod(DistillMethod):
    """A logit method for classification, dense and detection pairs.

    Subclasses implement :meth:`logit_loss` (``[B, K]`` logits, or ``[B, K, H, W]`` maps read as one row per
    labelled pixel) and :meth:`detection_loss` (rows of :attr:`detection`), and may add settings to
    :meth:`detection_refusals`. The config needs ``aux_weight`` and ``label_smoothing``.

    Attributes:
        detection: the pair's detection rows, or None unless the student is a detector.
    """

    mixed_labels = "soft"

    averages_teachers = True
    dense_outputs = True
    detection_outputs = True

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        self.detection = DetectionPair.build(cfg.name, ctx)  # None unless the student is a detector
        if self.detection is not None:
            refuse(cfg.name, self.detection_refusals())

    def detection_refusals(self) -> dict[str, bool]:
        """The settings a detection pair refuses: ``method.<name> -> whether it is set`` (the first set one is
        named in the error). Extend with the method's own."""
        return {"aux_weight": self.cfg.aux_weight > 0, "label_smoothing": self.cfg.label_smoothing > 0}

    def needs(self) -> Needs:
        if self.detection is not None:
            return self.detection.needs()
        return aux_needs(Needs(), self.cfg.aux_weight)

    def loss(self, io: StepIO) -> LossOut:
        if self.detection is not None:
            return self.detection_loss(io)
        return with_aux(self.logit_loss, io, self.cfg.aux_weight)

    def logit_loss(self, io: StepIO) -> LossOut:
        """The classification/dense terms of one step (with ``aux_weight``, also run on the auxiliary heads)."""
        raise NotImplementedError

    def detection_loss(self, io: StepIO) -> LossOut:
        """The terms of one detection step (the task term is ``io.task_loss(io.s.logits)``, reported as ``ce``)."""
        raise NotImplementedError
