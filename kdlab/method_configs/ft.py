"""Config of :class:`kdlab.methods.ft.FT`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.method_configs import register_config
from kdlab.method_configs._feature import LAST_STAGE, FeatureConfig
from kdlab.ranges import rng


@register_config("ft")
@dataclass(kw_only=True)
class FTConfig(FeatureConfig):
    """The ``method:`` fields of method ``ft`` (:class:`kdlab.methods.ft.FT`)."""

    name: str = "ft"
    ft_weight: float = field(default=200.0, metadata=rng(ge=0))
    """Weight of the factor-transfer term (RepDistiller's ``-b 200``)."""
    rate: float = field(default=0.5, metadata=rng(gt=0))
    """Channel ratio of the factor (the paraphraser's and translator's ``k``)."""
    p: float = field(default=2.0, metadata=rng(gt=0))
    """Power of the factor's attention map ``mean_c F^p``."""
    student_tap: str = LAST_STAGE
    """Student map fed to the translator; ``last`` is the last stage (the reference's ``feat[-2]``)."""
    teacher_tap: str = LAST_STAGE
    """Teacher map fed to the paraphraser."""
    init_epochs: int | None = field(default=None, metadata=rng(ge=0, note="0: no init stage"))
    """Epochs of the paraphraser's initialisation stage (RepDistiller's ``--init_epochs``); 0 skips it; None: 1/8 of
    ``train.epochs`` in whole epochs (the reference's 30 of 240; :mod:`kdlab.schedule`)."""
    init_lr: float | None = field(default=0.01, metadata=rng(gt=0))
    """Constant learning rate of the init stage: the reference's 0.01 for ResNet/WRN students; None: the run's
    ``optim.lr`` (the reference's choice for other students)."""
