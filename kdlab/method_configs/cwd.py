"""Config of :class:`kdlab.methods.cwd.CWD`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.ranges import rng


@register_config("cwd")
@dataclass(kw_only=True)
class CWDConfig(MethodConfig):
    """The ``method:`` fields of method ``cwd`` (:class:`kdlab.methods.cwd.CWD`)."""

    name: str = "cwd"
    ce_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the cross-entropy term."""
    cwd_weight: float = field(default=3.0, metadata=rng(ge=0))
    """Weight of CWD on the logits (CIRKD's ``--lambda-cwd-logit 3``)."""
    tau: float = field(default=4.0, metadata=rng(gt=0))
    """Temperature of the spatial softmax (CIRKD's ``CriterionCWD``: 4)."""
    feature_weight: float = field(default=50.0, metadata=rng(ge=0))
    """Weight of CWD on ``student_tap`` / ``teacher_tap`` (CIRKD's ``--lambda-cwd-fea 50``), 0 for none."""
    student_tap: str = "last"
    """Student feature map of the feature term; ``last`` is the last stage (``stageN``)."""
    teacher_tap: str = "last"
    """Teacher feature map of the feature term; ``last`` is the last stage."""
    aux_weight: float = field(default=0.0, metadata=rng(ge=0))
    """Weight of the cross-entropy of the student's auxiliary head (``aux`` tap), 0 for none."""
