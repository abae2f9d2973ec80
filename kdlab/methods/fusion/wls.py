"""``wls_kd``: weighted soft labels over a sample-fusion wrapper (:mod:`kdlab.methods.fusion.base`).

Zhou et al., "Rethinking Soft Labels for Knowledge Distillation: A Bias-Variance Tradeoff Perspective", ICLR 2021,
arXiv 2102.00650: ``a_i = w_kd * (1 - exp(-CE_s,i / CE_t,i))`` on detached logits at T = 1, ``b_i = w_gt`` (the label
term is not re-weighted).

Reference: open-mmlab/mmrazor ``models/losses/weighted_soft_label_distillation.py`` for WSL's weight.

Deviations:
- WSL's distillation term is ``T^2 KL`` where mmrazor uses the soft cross-entropy ``-T^2 sum p_t log p_s``: they
  differ by the teacher's entropy, a constant of the student, so the gradients are identical.
"""

from __future__ import annotations

from torch import Tensor

from kdlab.losses import fusion as fusion_losses
from kdlab.method_configs.fusion import WeightedSoftLabelFusionConfig
from kdlab.methods import register_method
from kdlab.methods.fusion.base import SampleFusion, SampleTerms
from kdlab.types import StepIO


@register_method("wls_kd", description="WSL/WLS-KD: KD term weighted per sample by 1 - exp(-CE_s / CE_t)")
class WeightedSoftLabelFusion(SampleFusion):
    """Weighted soft labels: the distillation term of each sample is scaled by how much worse the student fits the
    label than the teacher; the label term keeps the inner method's weight."""

    Config = WeightedSoftLabelFusionConfig

    def ratio(self, io: StepIO, terms: SampleTerms) -> Tensor:
        return fusion_losses.weighted_soft_label_weight(io.s.logits, io.teacher_logits(), io.y)

    def weights(self, io: StepIO, terms: SampleTerms, ratio: Tensor) -> tuple[Tensor, Tensor]:
        return terms.kd_weight * ratio, terms.gt.new_full(terms.gt.shape, terms.gt_weight)
