"""Config of :class:`kdlab.methods.review_kd.ReviewKD`: torch-free, so a run config is read without importing the
methods (:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.ranges import rng


@register_config("review_kd")
@dataclass(kw_only=True)
class ReviewKDConfig(MethodConfig):
    """The ``method:`` fields of method ``review_kd`` (:class:`kdlab.methods.review_kd.ReviewKD`)."""

    name: str = "review_kd"
    review_weight: float = field(default=5.0, metadata=rng(ge=0))
    """Weight of the HCL term (mdistiller's CIFAR-100 ``REVIEWKD_WEIGHT``; 1 on ImageNet)."""
    ce_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the cross-entropy."""
    warmup_epochs: int | None = field(default=None, metadata=rng(ge=0, note="0: no ramp"))
    """The HCL term is scaled by ``min((epoch + 1) / warmup_epochs, 1)`` (0: no ramp); None: 1/12 of
    ``train.epochs`` (the reference's 20 of 240; :mod:`kdlab.schedule`)."""
    max_mid_channels: int = field(default=512, metadata=rng(ge=1))
    """Upper bound of the ABF width (which is the student's embedding width below it)."""
    levels: list[int] = field(default_factory=lambda: [4, 2, 1], metadata=rng(ge=1))
    """HCL pyramid sizes."""
    student_preact: bool = False
    """Use the student's ``stageK.pre`` taps instead of ``stageK``."""
    teacher_preact: bool = True
    """Use the teacher's ``stageK.pre`` taps (when it has them) instead of ``stageK``."""
