"""Config of :class:`kdlab.methods.tekap.TeKAP`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.method_configs.kd import KDConfig
from kdlab.ranges import rng


@register_config("tekap")
@dataclass(kw_only=True)
class TeKAPConfig(MethodConfig):
    """The ``method:`` fields of method ``tekap`` (:class:`kdlab.methods.tekap.TeKAP`)."""

    name: str = "tekap"
    inner: MethodConfig = field(default_factory=KDConfig)
    """The wrapped method (any registered method that reads a teacher); default ``kd`` (TeKAP(L))."""
    num_views: int = field(default=3, metadata=rng(ge=1))
    """N, the number of perturbed teacher views per step."""
    noise_weight: float = field(default=0.1, metadata=rng(ge=0))
    """Mixing weight ``a`` of the noise: ``view = (1 - a) * teacher + a * noise``."""
    clean_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the inner method's teacher terms on the clean teacher (lambda in the paper's convex form)."""
    view_weight: float = field(default=0.8, metadata=rng(ge=0))
    """Weight of the sum over views (1 - lambda in the paper's convex form)."""
    noise_std: float = field(default=1.0, metadata=rng(ge=0))
    """Standard deviation of the Gaussian noise (0.1 in the released feature-level code)."""
    perturb: Literal["logits", "features", "both"] = "logits"
    """What the views perturb: the teacher's logits, its feature taps, or both."""
    feature_taps: list[str] = field(default_factory=list)
    """Teacher taps perturbed when ``perturb`` includes features; empty: every tap the inner method reads."""
