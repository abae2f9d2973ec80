"""Config fields shared by the feature-level methods (:mod:`kdlab.methods._feature`), and the tap value ``last``."""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab.config import MethodConfig
from kdlab.ranges import rng

#: Config value of a single-tap field meaning "the last stage map" (``stageN``).
LAST_STAGE = "last"


@dataclass(kw_only=True)
class FeatureConfig(MethodConfig):
    """Fields every feature-level method has: the cross-entropy term next to the feature term."""

    ce_weight: float = field(default=1.0, metadata=rng(ge=0))
    """Weight of the cross-entropy term (RepDistiller's ``-r``, 1 in every CRD-benchmark run)."""
    label_smoothing: float = field(default=0.0, metadata=rng(ge=0, lt=1))
    """Label smoothing epsilon of the cross-entropy term."""
