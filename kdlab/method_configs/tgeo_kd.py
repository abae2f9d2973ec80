"""Config of :class:`kdlab.methods.tgeo_kd.TGeoKD`: torch-free, so a run config is read without importing the methods
(:mod:`kdlab.method_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kdlab.method_configs import register_config
from kdlab.method_configs.fusion import LearnedFusionConfig
from kdlab.ranges import rng


@register_config("tgeo_kd")
@dataclass(kw_only=True)
class TGeoKDConfig(LearnedFusionConfig):
    """The ``method:`` fields of method ``tgeo_kd`` (:class:`kdlab.methods.tgeo_kd.TGeoKD`)."""

    name: str = "tgeo_kd"
    feature_set: Literal["edges", "intra", "intra_inter"] = "intra_inter"
    """Inputs of f_omega: the edges, the intra-sample triangle, or both triangles (the paper's full model)."""
    feature_temperature: float = field(default=1.0, metadata=rng(gt=0))
    """Softmax temperature of the predictions S, T and Tbar in the features."""
