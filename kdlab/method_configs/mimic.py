"""Config of :class:`kdlab.methods.mimic.Mimic`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kdlab.method_configs import register_config
from kdlab.method_configs._feature import FeatureConfig
from kdlab.ranges import rng


@register_config("mimic")
@dataclass(kw_only=True)
class MimicConfig(FeatureConfig):
    """The ``method:`` fields of method ``mimic`` (:class:`kdlab.methods.mimic.Mimic`); the defaults are the DIST
    authors' mimic setting on COCO (MSE on every FPN level, weight 1, a 1x1 convolution per level)."""

    name: str = "mimic"
    mimic_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the mimic term (the sum over the paired maps of their MSE)."""
    adapter: bool = True
    """A learnable 1x1 convolution (with bias) on every student map, even at equal widths (the authors'
    ``align_module``); false: none, and the widths must match."""
    mask: Literal["none", "boxes"] = "none"
    """``none``: every position (the authors' setting); ``boxes``: only the positions inside a ground-truth box
    (detection pairs only)."""
    student_taps: list[str] = field(default_factory=list)
    """Student maps, paired with ``teacher_taps`` by position; empty: every FPN level on a detector, else the last
    stage."""
    teacher_taps: list[str] = field(default_factory=list)
    """Teacher maps; empty: every FPN level on a detector, else the last stage."""
