"""Typed values passed between the data layer, the models, the methods and the trainer.

Everything here is a small frozen dataclass so that methods are pure functions of typed model outputs
(DESIGN.md, principle 2): a method receives a :class:`StepIO` and returns a :class:`LossOut`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

#: Name of the default view of a batch (the plainly augmented image).
DEFAULT_VIEW = "x"
#: Prefix of the taps that carry a model's own task losses (detection models: ``loss.classification``, ...).
LOSS_TAP_PREFIX = "loss."


@dataclass(frozen=True)
class TapInfo:
    """One feature tap a model can return.

    Attributes:
        name: canonical tap name (``stem``, ``stage1`` .. ``stageN``, ``stageK.pre``, ``pool``).
        channels: channel count (``C`` of ``[B, C, H, W]``, or ``D`` of a ``[B, D]`` embedding).
        stride: spatial reduction relative to the input (1 for ``pool``, which has no spatial extent).
        kind: ``"post"`` (a post-activation map), ``"pre"`` (before the final ReLU of a stage) or ``"pool"``.
    """

    name: str
    channels: int
    stride: int
    kind: str = "post"


@dataclass(frozen=True)
class Outputs:
    """One model, one view, one forward.

    Attributes:
        logits: ``[B, K]`` class scores (detection models: their classification outputs in training mode,
            ``[B, D, 6]`` detections in eval mode; :mod:`kdlab.models.detection`).
        taps: feature taps by canonical name, e.g. ``"stage3": [B, C, H, W]``, ``"pool": [B, D]``; a model that
            computes its own task losses (detection) adds them as 0-dim ``"loss.<name>"`` taps.
    """

    logits: Tensor
    taps: Mapping[str, Tensor] = field(default_factory=dict)

    @property
    def losses(self) -> dict[str, Tensor]:
        """The model's own task losses: its ``"loss.<name>"`` taps as ``{name: 0-dim tensor}`` (prefix removed, in
        tap order); empty for models that have none (classifiers, segmentation)."""
        n = len(LOSS_TAP_PREFIX)
        return {k[n:]: v for k, v in self.taps.items() if k.startswith(LOSS_TAP_PREFIX)}

    def replace(self, **changes: object) -> Outputs:
        """Return a copy with some fields replaced."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Batch:
    """A training or evaluation batch, already on the training device.

    Attributes:
        x: ``[B, C, H, W]`` normalised float images of the default view, or token inputs (``[B, L]`` int64 ids, or a
            dict of ``[B, L]`` tensors ``input_ids``, ``attention_mask``, ``token_type_ids``: :mod:`kdlab.data.tokens`).
        y: ``[B]`` integer labels; in a Mixup/CutMix batch the dominant label of each mixed image (its own when
            its weight ``lambda >= 0.5``, else its partner's: :mod:`kdlab.data.augment_mix`).
        index: ``[B]`` dataset position of every sample (CRD, per-sample methods); in a mixed batch the sample whose
            image has weight ``lambda``.
        views: extra views by name (e.g. ``"strong"`` for MLKD), each ``[B, C, H, W]``.
        y_soft: ``[B, K]`` mixed label distributions (rows sum to 1) when the run mixes batches
            (``data.mixup_alpha``/``data.cutmix_alpha``), else None; :meth:`StepIO.cross_entropy` trains on them.
    """

    x: Tensor
    y: Tensor
    index: Tensor
    views: Mapping[str, Tensor] = field(default_factory=dict)
    y_soft: Tensor | None = None

    def view(self, name: str) -> Tensor:
        """The images of view ``name`` (``"x"`` is the default view)."""
        return self.x if name == DEFAULT_VIEW else self.views[name]

    @property
    def size(self) -> int:
        """Number of samples ``B``."""
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Progress:
    """Where training stands when a step runs.

    Attributes:
        step: global optimiser step counted from 0.
        epoch: 0-based index of the current epoch.
        step_in_epoch: 0-based step inside the epoch.
        steps_per_epoch: optimiser steps in one epoch.
        total_epochs: epochs of the current stage.
        stage: name of the current training stage: ``"main"``, or a stage a method declared to run before it
            (:meth:`kdlab.methods.base.DistillMethod.stages`). ``step`` and ``epoch`` count within the stage.
    """

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    steps_per_epoch: int = 1
    total_epochs: int = 1
    stage: str = "main"

    @property
    def epoch_float(self) -> float:
        """Fractional epochs done so far, e.g. 2.5 halfway through the third epoch."""
        return self.epoch + self.step_in_epoch / max(self.steps_per_epoch, 1)

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run."""
        return self.steps_per_epoch * self.total_epochs

    @property
    def fraction(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(self.step / max(self.total_steps, 1), 1.0)


@dataclass(frozen=True)
class StepIO:
    """Everything a method sees in one training step.

    Attributes:
        student: the student's outputs, by view name.
        teachers: one mapping per teacher (real teachers, or synthetic views of one teacher), by view name.
        batch: the batch (labels, dataset indices, images).
        progress: where training stands.
        label_smoothing: the run's ``train.label_smoothing``, applied by :meth:`cross_entropy`.
    """

    student: Mapping[str, Outputs]
    teachers: tuple[Mapping[str, Outputs], ...]
    batch: Batch
    progress: Progress = field(default_factory=Progress)
    label_smoothing: float = 0.0

    @property
    def s(self) -> Outputs:
        """The student's outputs on the default view."""
        return self.student[DEFAULT_VIEW]

    @property
    def t(self) -> Outputs:
        """The first teacher's outputs on the default view."""
        if not self.teachers:
            raise LookupError("this method reads a teacher, but the run has none: set model.teachers in the config")
        return self.teachers[0][DEFAULT_VIEW]

    @property
    def y(self) -> Tensor:
        """``[B]`` labels."""
        return self.batch.y

    def cross_entropy(self, logits: Tensor, label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
        """The task term: cross-entropy of student ``logits`` (``[B, K]``) with the batch's labels.

        Every method's cross-entropy with the labels goes through here, so that run-level settings reach all of
        them: label smoothing is the method's own ``label_smoothing`` when it is > 0, else the run's
        ``train.label_smoothing`` (:attr:`label_smoothing`). In a Mixup/CutMix batch the target is the mixed label
        distribution ``batch.y_soft``, smoothed as ``(1 - eps) y_soft + eps / K`` (timm's ``mixup_target``).
        Returns a scalar, or ``[B]`` with ``reduction="none"``.
        """
        from kdlab.losses import cross_entropy

        eps = label_smoothing if label_smoothing > 0 else self.label_smoothing
        target = self.y if self.batch.y_soft is None else self.batch.y_soft
        return cross_entropy(logits, target, eps, reduction)

    def task_loss(self, logits: Tensor, label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
        """The student's task term: the sum of its own task losses (:attr:`Outputs.losses` of the default view, e.g.
        a detector's classification and box losses) when it computes any, else :meth:`cross_entropy` of ``logits``.

        Methods report it as their ``ce`` term. The detection losses are already means over the batch, so
        ``reduction="none"`` (per-sample terms) is refused for them with a ``ValueError``.
        """
        losses = self.s.losses
        if not losses:
            return self.cross_entropy(logits, label_smoothing, reduction)
        if reduction != "mean":
            raise ValueError(
                f"task_loss(reduction={reduction!r}): the model's own losses ({', '.join(losses)}) are batch means; "
                "per-sample terms exist only for cross-entropy"
            )
        values = list(losses.values())
        total = values[0]
        for v in values[1:]:
            total = total + v
        return total

    def teacher_logits(self, view: str = DEFAULT_VIEW) -> Tensor:
        """``[M, B, K]``: the logits of all ``M`` teachers (or synthetic views) on ``view``, stacked."""
        if not self.teachers:
            return self.t.logits  # raises the "no teacher" error
        return torch.stack([t[view].logits for t in self.teachers])

    def replace(self, **changes: object) -> StepIO:
        """Return a copy with some fields replaced (e.g. ``teachers=`` for perturbed views)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Needs:
    """What a method asks the trainer and the data layer for.

    Attributes:
        student_taps: feature taps of the student (canonical names).
        teacher_taps: feature taps of each teacher.
        views: views of each image; ``"x"`` is the default view, ``"strong"`` adds a RandAugment view.
        batch_fields: extra batch fields the method reads (``"index"``).
        holdout_fraction: fraction of the training set held out for the method (bilevel methods), 0 for none.
        teacher: whether the method reads a teacher at all (``ce`` does not).
        teacher_logits: whether the method reads the teachers' logits (``Outputs.logits``); False lets a frozen
            teacher skip work only its logits need (a detector's proposals, RoI head and post-processing when only
            its FPN taps are read: :class:`kdlab.train.teacher.FrozenTeacher`). Classifiers compute them anyway.
    """

    student_taps: frozenset[str] = frozenset()
    teacher_taps: frozenset[str] = frozenset()
    views: tuple[str, ...] = (DEFAULT_VIEW,)
    batch_fields: frozenset[str] = frozenset()
    holdout_fraction: float = 0.0
    teacher: bool = True
    teacher_logits: bool = True

    def union(self, other: Needs) -> Needs:
        """The needs of two methods run together."""
        views = tuple(dict.fromkeys(self.views + other.views))
        return Needs(
            student_taps=self.student_taps | other.student_taps,
            teacher_taps=self.teacher_taps | other.teacher_taps,
            views=views,
            batch_fields=self.batch_fields | other.batch_fields,
            holdout_fraction=max(self.holdout_fraction, other.holdout_fraction),
            teacher=self.teacher or other.teacher,
            teacher_logits=self.teacher_logits or other.teacher_logits,
        )


@dataclass
class LossOut:
    """The result of a method's loss.

    Attributes:
        terms: already weighted scalar loss terms; their sum is back-propagated.
        metrics: scalars that are only logged (never back-propagated).
    """

    terms: dict[str, Tensor]
    metrics: dict[str, Tensor] = field(default_factory=dict)

    @property
    def total(self) -> Tensor:
        """Sum of all terms (a scalar)."""
        values = list(self.terms.values())
        if not values:
            raise ValueError("a method returned no loss terms")
        total = values[0]
        for v in values[1:]:
            total = total + v
        return total
