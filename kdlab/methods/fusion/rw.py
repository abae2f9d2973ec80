"""``rw_kd``: a learned fusion policy (:mod:`kdlab.methods.fusion.learned`) over the pair of per-sample losses.

Lu et al., "RW-KD: Sample-wise Loss Terms Re-Weighting for Knowledge Distillation", Findings of EMNLP 2021:
``alpha_i = f_omega([G_i, K_i])``, a meta-learner over the two per-sample losses trained on a held-out split with the
one-step-unrolled hypergradient of :class:`~kdlab.methods.fusion.hypergradient.HypergradientStep` (the TGeo-KD
solver).

Deviations:
- RW-KD's meta-learner input is the pair of per-sample losses and its output the convex ratio: the paper's exact
  meta-learner is not available to us; TGeo-KD's code replaces it with a free per-sample parameter trained on the
  training loss, which is not the method (no held-out data).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdlab.config import MethodConfig
from kdlab.method_configs.fusion import ReweightFusionConfig
from kdlab.methods import register_method
from kdlab.methods.base import BuildContext
from kdlab.methods.fusion.base import SampleTerms
from kdlab.methods.fusion.learned import LearnedFusion
from kdlab.types import StepIO


@register_method(
    "rw_kd", description="RW-KD: per-sample KD/CE ratio from a meta-learner over both losses, trained on held-out data"
)
class ReweightFusion(LearnedFusion):
    """RW-KD: ``alpha_i = f_omega([G_i, K_i])`` meta-learned against a held-out split."""

    Config = ReweightFusionConfig

    def feature_dim_for(self, cfg: MethodConfig, ctx: BuildContext) -> int:
        return 2

    def features(self, io: StepIO, terms: SampleTerms) -> Tensor:
        return torch.stack([terms.gt.detach(), terms.kd.detach()], dim=-1)

    def feature_names(self) -> tuple[str, ...]:
        return ("gt_loss", "kd_loss")
