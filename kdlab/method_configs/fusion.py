"""Config of :class:`kdlab.methods.fusion.base.SampleFusion`, :class:`kdlab.methods.fusion.learned.LearnedFusion`,
:class:`kdlab.methods.fusion.anl.AnnealedFusion`, :class:`kdlab.methods.fusion.ada.MarginFusion`,
:class:`kdlab.methods.fusion.wls.WeightedSoftLabelFusion`, :class:`kdlab.methods.fusion.rw.ReweightFusion`:
torch-free, so a run config is read without importing the methods (:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.method_configs import register_config
from kdlab.method_configs.kd import KDConfig
from kdlab.ranges import rng


@dataclass(kw_only=True)
class SampleFusionConfig(MethodConfig):
    """The ``method:`` fields of the methods built on it (:class:`kdlab.methods.fusion.base.SampleFusion`)."""

    name: str = ""
    inner: MethodConfig = field(default_factory=KDConfig)
    """The wrapped method: ``kd`` (default), ``dkd`` or ``dist`` (any method with a per-sample form)."""
    histogram_bins: int = field(default=10, metadata=rng(ge=1))
    """Bins of the logged ratio histogram over [0, 1] (per step, split by teacher correctness); 0 for none."""


@dataclass(kw_only=True)
class LearnedFusionConfig(SampleFusionConfig):
    """The ``method:`` fields of the methods built on it (:class:`kdlab.methods.fusion.learned.LearnedFusion`)."""

    hidden: list[int] = field(default_factory=lambda: [128], metadata=rng(ge=1))
    """Hidden widths of f_omega (ReLU MLP ending in a sigmoid)."""
    init_ratio: float = field(default=0.5, metadata=rng(gt=0, lt=1))
    """The ratio every sample starts at (f_omega's last layer starts at zero weights and this bias)."""
    holdout_fraction: float = field(default=0.1, metadata=rng(gt=0, lt=1))
    """Share of the training set held out for omega (stratified; used when data.val_fraction is 0)."""
    meta_every: int = field(default=1, metadata=rng(ge=1))
    """Update omega every this many student steps (k)."""
    meta_lr: float = field(default=1e-3, metadata=rng(gt=0))
    """Learning rate of omega's Adam optimiser."""
    meta_weight_decay: float = field(default=0.0, metadata=rng(ge=0))
    """Weight decay of omega's optimiser."""
    virtual_lr: float | None = field(default=None, metadata=rng(gt=0))
    """Step size of the virtual student step; None: the main optimiser's current learning rate."""


@register_config("anl_kd")
@dataclass(kw_only=True)
class AnnealedFusionConfig(SampleFusionConfig):
    """The ``method:`` fields of method ``anl_kd`` (:class:`kdlab.methods.fusion.anl.AnnealedFusion`)."""

    name: str = "anl_kd"
    alpha_start: float = field(default=1.0, metadata=rng(ge=0, le=1))
    """Ratio of the distillation term at the start of training."""
    alpha_end: float = field(default=0.0, metadata=rng(ge=0, le=1))
    """Ratio at the end of training."""


@register_config("ada_kd")
@dataclass(kw_only=True)
class MarginFusionConfig(SampleFusionConfig):
    """The ``method:`` fields of method ``ada_kd`` (:class:`kdlab.methods.fusion.ada.MarginFusion`)."""

    name: str = "ada_kd"
    margin_temperature: float = field(default=1.0, metadata=rng(gt=0))
    """Softmax temperature of the teacher probabilities the margin reads."""


@register_config("wls_kd")
@dataclass(kw_only=True)
class WeightedSoftLabelFusionConfig(SampleFusionConfig):
    """The ``method:`` fields of method ``wls_kd`` (:class:`kdlab.methods.fusion.wls.WeightedSoftLabelFusion`)."""

    name: str = "wls_kd"
    inner: MethodConfig = field(default_factory=lambda: KDConfig(temperature=2.0, ce_weight=1.0, kd_weight=2.5))
    """The wrapped method; default ``kd`` at mmrazor's WSLD setting (tau 2, weight 2.5, CE 1)."""


@register_config("rw_kd")
@dataclass(kw_only=True)
class ReweightFusionConfig(LearnedFusionConfig):
    """The ``method:`` fields of method ``rw_kd`` (:class:`kdlab.methods.fusion.rw.ReweightFusion`)."""

    name: str = "rw_kd"
    hidden: list[int] = field(default_factory=lambda: [64], metadata=rng(ge=1))
    """Hidden widths of the meta-learner."""
