"""The method contract (DESIGN.md, "The method contract").

A method is an ``nn.Module`` with a nested ``Config`` dataclass and one required function,
``loss(io: StepIO) -> LossOut``. It never calls the models: the trainer runs them and hands the outputs over.
Learnable parts live in ``self.adapters`` (trained with the student, the only parameters DDP may see besides
the student); extra optimisation loops are :class:`AuxObjective` objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdlab.config import MethodConfig
from kdlab.types import LossOut, Needs, Progress, StepIO, TapInfo


@dataclass
class BuildContext:
    """What a method may know when it is built (before training).

    Attributes:
        num_classes: ``K``.
        num_train: number of training samples (size of per-sample state such as CRD's memory bank).
        student_taps: the student's taps (name -> :class:`TapInfo`).
        teacher_taps: per teacher, its taps.
        student_shapes: shapes (without batch) of the student's taps and ``"logits"``, from one dry run.
        teacher_shapes: per teacher, the same.
        teacher_classifiers: per teacher, its final ``nn.Linear`` (frozen; SimKD reuses it).
        teacher_models: the frozen teachers themselves (unwrapped, eval mode, no gradients), for a method that needs
            a teacher's sub-network on the student's data in ``loss()``: a two-stage detection teacher's
            ``roi_class_logits`` on the student's proposals (the detection contract).
        teacher_bn_before_relu: per teacher, ``{"stageK.pre": BatchNorm2d}`` for each pre-activation tap whose BN the
            model exposes (:meth:`kdlab.models.base.TapModel.bn_before_relu`; frozen; OFD's margins).
        student_classifier: the student's final ``nn.Linear``.
        train_labels: ``[N]`` labels of the training set (for class-aware sampling), on the device.
        device: the training device.
        seed: the run's seed (for method-owned generators).
        total_epochs: epochs of the main stage (``train.epochs``); schedule-bound defaults such as an initialisation
            stage's length scale with it (:mod:`kdlab.schedule`); 0 when unknown (the reference's 240 are assumed).
    """

    num_classes: int
    num_train: int = 0
    student_taps: Mapping[str, TapInfo] = field(default_factory=dict)
    teacher_taps: Sequence[Mapping[str, TapInfo]] = ()
    student_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    teacher_shapes: Sequence[Mapping[str, tuple[int, ...]]] = ()
    teacher_classifiers: Sequence[nn.Module] = ()
    teacher_models: Sequence[nn.Module] = ()
    teacher_bn_before_relu: Sequence[Mapping[str, nn.Module]] = ()
    student_classifier: nn.Module | None = None
    train_labels: Tensor | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    total_epochs: int = 0


@dataclass
class PrepareContext:
    """Handed to :meth:`DistillMethod.prepare` once before the first step (and again after a resume).

    Attributes:
        teacher_outputs: ``fn(taps) -> iterator of (Batch, [Outputs per teacher])`` over the un-augmented
            training split, teachers in eval and inference mode.
        device: the training device.
    """

    teacher_outputs: Callable[..., Any]
    device: torch.device


@dataclass
class AuxContext:
    """Handed to :meth:`AuxObjective.step`.

    Attributes:
        student: the student (un-wrapped).
        method: the method that owns the objective.
        progress: where training stands (after the main step).
        lr: the main optimiser's current learning rate.
        batch: the training batch of the step just taken.
        teacher_outputs: ``fn(batch) -> tuple of {view: Outputs}`` per teacher (frozen, inference mode).
        student_outputs: ``fn(batch, params=None) -> {view: Outputs}``; with ``params`` (a name -> tensor
            mapping of the student's parameters) the student runs functionally (``torch.func.functional_call``).
        heldout_batches: ``fn() -> iterator of Batch`` over the held-out split, forever: ``data.val_fraction`` of the
            training set, or the method's ``Needs.holdout_fraction`` when that is 0 (never the test set).
        teachers: the teachers' outputs of the step just taken (one ``{view: Outputs}`` per teacher), so that an
            objective re-reading ``batch`` needs no second teacher forward; empty when not available.
        label_smoothing: the run's ``train.label_smoothing`` (for a :class:`~kdlab.types.StepIO` built here).
        step_grads: for an objective that runs before the optimiser step
            (:attr:`AuxObjective.before_optimizer_step`), the main step's gradient of each trainable student parameter
            (name -> ``Tensor`` or None) when it is exactly the gradient of the method's loss on ``batch`` (fp32, no
            loss scaling or term factors, one process; under ``train.clip_grad_norm`` the gradient before clipping,
            which the objective sees first); None otherwise.
    """

    student: nn.Module
    method: DistillMethod
    progress: Progress
    lr: float
    batch: Any
    teacher_outputs: Callable[..., Any]
    student_outputs: Callable[..., Any]
    heldout_batches: Callable[[], Any]
    teachers: tuple = ()
    label_smoothing: float = 0.0
    step_grads: dict[str, Tensor | None] | None = None


class AuxObjective:
    """An extra optimisation loop owned by a method (e.g. the TGeo-KD outer step).

    The trainer calls :meth:`step` whenever :meth:`due` says so, after the main optimiser step (or, with
    :attr:`before_optimizer_step`, after the main step's backward and before its optimiser step, the student still at
    the parameters the step's gradient was taken at), and checkpoints :meth:`state_dict`.

    Under several processes (``torchrun``) the trainer calls :meth:`step` on every rank; the objective's own parameters
    are outside DDP, so an objective that trains them from per-rank data calls
    :func:`kdlab.distributed.average_gradients` on them between its ``backward()`` and its optimiser step
    (a no-op in one process), which keeps them identical across ranks.
    """

    #: Run between the main step's backward and its optimiser step (the objective must not touch the student's
    #: parameters or ``.grad``); :attr:`AuxContext.step_grads` may then hand it the step's gradient.
    before_optimizer_step: bool = False

    def due(self, progress: Progress) -> bool:
        """Whether to run at this step."""
        return True

    def step(self, ctx: Any) -> dict[str, float]:
        """Run one update; return scalars to log."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Everything needed to resume."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""


MAIN_STAGE = "main"

#: Values of :attr:`DistillMethod.mixed_labels`.
MIXED_LABEL_RULES = ("soft", "dominant", "refuse")


def strictest_mixed_labels(rules) -> str | None:
    """The strictest of several methods' rules (a wrapper or a sum of methods): refuse > dominant > soft;
    an undeclared (None) member makes the whole undeclared."""
    rules = list(rules)
    if any(r not in MIXED_LABEL_RULES for r in rules):
        return None
    return max(rules, key=MIXED_LABEL_RULES.index, default="soft")


def mixed_labels_refusal(method: DistillMethod) -> str | None:
    """Why ``method`` cannot train on Mixup/CutMix batches, or None when it can (``soft`` or ``dominant``)."""
    rule = getattr(method, "mixed_labels", None)
    if rule in ("soft", "dominant"):
        return None
    if rule == "refuse":
        return getattr(method, "mixed_labels_reason", "") or "it needs one hard label per image"
    return (
        f"{type(method).__name__} does not declare how it trains on mixed labels "
        "(DistillMethod.mixed_labels: soft, dominant or refuse)"
    )


@dataclass(frozen=True)
class Stage:
    """A training stage a method runs before the main stage (e.g. the initialisation stages of AB, FT, FSP).

    During a stage the trainer calls the method's ``loss`` with ``io.progress.stage == name``, and optimises
    only the parameters ``trains`` names, with a fresh optimiser of the run's kind at a constant learning rate.

    Attributes:
        name: stage name (``"main"`` is the trainer's own last stage).
        epochs: length in epochs.
        trains: ``"adapters"`` (the method's adapters), ``"student"`` or ``"all"`` (student and adapters).
        lr: learning rate; None for the run's ``optim.lr``.
        student_mode: ``"train"`` or ``"eval"``: the student's mode during the stage (BN batch statistics or running
            statistics); None: train mode exactly when the stage trains the student.
    """

    name: str
    epochs: int
    trains: str = "adapters"
    lr: float | None = None
    student_mode: str | None = None

    def __post_init__(self) -> None:
        if self.trains not in ("adapters", "student", "all"):
            raise ValueError(f"Stage.trains must be 'adapters', 'student' or 'all', got {self.trains!r}")
        if self.student_mode not in (None, "train", "eval"):
            raise ValueError(f"Stage.student_mode must be 'train', 'eval' or None, got {self.student_mode!r}")

    @property
    def student_training(self) -> bool:
        """Whether the student is in training mode during this stage."""
        if self.student_mode is None:
            return self.trains != "adapters"
        return self.student_mode == "train"


class DistillMethod(nn.Module):
    """Base class of every method (registered with :func:`kdlab.methods.register_method`).

    Subclasses define ``Config`` (a ``MethodConfig`` dataclass) and :meth:`loss`; everything else has a
    no-op default.

    Args:
        cfg: the method's config.
        ctx: taps, shapes and dataset facts the method may build its adapters from.
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: Names of the loss terms that read no teacher output (e.g. the cross-entropy). A wrapper that replaces the
    #: teacher by synthetic views (TeKAP) keeps these once instead of re-weighting them per view.
    teacher_free_terms: ClassVar[frozenset[str]] = frozenset({"ce", "ce.aux"})
    #: True when ``loss`` given several teachers returns each teacher-dependent term as the mean over teachers of
    #: its single-teacher value. A wrapper may then evaluate many synthetic views in one ``loss`` call.
    averages_teachers: ClassVar[bool] = False
    #: Names of the teacher-dependent terms that read only the teachers' feature taps, never their logits (e.g.
    #: CA-MKD's intermediate-feature term). A wrapper that perturbs only the logits (TeKAP(L)) keeps these once.
    logit_free_terms: ClassVar[frozenset[str]] = frozenset()
    #: True when ``loss`` accepts dense outputs (segmentation: logits ``[B, K, h, w]``, labels ``[B, H, W]`` with
    #: ignore index 255; :mod:`kdlab.methods._dense`). Other methods are refused on a dense pair when the run is built.
    dense_outputs: ClassVar[bool] = False
    #: How the method trains on Mixup/CutMix batches (``Batch.y_soft`` set, ``Batch.y`` the dominant label):
    #: ``"soft"``: its loss reads labels only through :meth:`StepIO.cross_entropy` (the mixed targets);
    #: ``"dominant"``: a hard-label part of its loss (a target-class mask, a teacher-correctness gate) reads
    #: ``Batch.y``, the dominant label of each mixed image; ``"refuse"``: it cannot, and a run that mixes is refused
    #: when it is built (:attr:`mixed_labels_reason` says why). None (undeclared) is refused as well.
    mixed_labels: ClassVar[str | None] = None
    #: Why a ``"refuse"`` method cannot train on mixed labels (shown in the build error).
    mixed_labels_reason: ClassVar[str] = ""

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.cfg = cfg
        self.adapters = nn.ModuleDict()

    def needs(self) -> Needs:
        """What the method reads (taps, views, batch fields); the default reads the teacher's logits."""
        return Needs()

    def loss(self, io: StepIO) -> LossOut:
        """Named, weighted loss terms for one batch."""
        raise NotImplementedError

    def prepare(self, ctx: PrepareContext) -> None:
        """One-off set-up before training (e.g. per-class teacher means)."""

    def stages(self) -> Sequence[Stage]:
        """Stages to run, in order, before the main stage (default: none)."""
        return ()

    def aux_objectives(self) -> Sequence[AuxObjective]:
        """Extra optimisation loops (default: none)."""
        return ()

    def export(self, student: nn.Module) -> nn.Module:
        """The deployable model (default: the student itself)."""
        return student

    def sample_weights(self, io: StepIO) -> Tensor | None:
        """``[B]`` per-sample weights the method gives the teacher's knowledge on this batch, or None (default).

        For a sample-weighting method this is its per-sample fusion ratio (e.g. TGeo-KD's ``alpha_i`` in
        ``alpha_i * L_KD + (1 - alpha_i) * L_CE``), computed from ``io`` exactly as :meth:`loss` would, without
        side effects. ``kdlab analyze discrepancy`` reads it; a wrapper forwards its inner method's weights.
        """
        return None

    def generator_state(self) -> dict[str, Tensor]:
        """States of method-owned random generators, saved in checkpoints (override when a method has some)."""
        return {}

    def set_generator_state(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`generator_state`."""
