"""Config of :class:`kdlab.methods.ab.AB`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kdlab.method_configs import register_config
from kdlab.method_configs._feature import FeatureConfig
from kdlab.ranges import rng


@register_config("ab")
@dataclass(kw_only=True)
class ABConfig(FeatureConfig):
    """The ``method:`` fields of method ``ab`` (:class:`kdlab.methods.ab.AB`)."""

    name: str = "ab"
    init_epochs: int | None = field(default=None, metadata=rng(ge=0, note="0: no init stage"))
    """Epochs of the initialisation stage (RepDistiller's ``--init_epochs``); 0 skips it; None: 1/8 of
    ``train.epochs`` in whole epochs (the reference's 30 of 240; :mod:`kdlab.schedule`)."""
    init_lr: float | None = field(default=None, metadata=rng(gt=0))
    """Constant learning rate of the init stage; None: the run's ``optim.lr`` (as the reference)."""
    init_student_mode: Literal["eval", "train"] = "eval"
    """The student's mode in the init stage: ``eval`` as the reference (``model_s.eval()``: BN layers are affine
    maps with their running statistics, which stay put), ``train`` for batch statistics."""
    ab_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the AB loss in the init stage (the reference's init loss is unweighted)."""
    margin: float = field(default=1.0, metadata=rng(ge=0))
    """Margin ``m`` of the alternative L2 loss."""
    student_taps: list[str] = field(default_factory=list)
    """Student maps, paired with ``teacher_taps`` by position; empty: every stage, pre-activation where the
    model provides it (``stageK.pre``, else ``stageK``)."""
    teacher_taps: list[str] = field(default_factory=list)
    """Teacher maps; empty: every stage, pre-activation where the model provides it."""
