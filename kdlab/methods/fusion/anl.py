"""``anl_kd``: teacher annealing over a sample-fusion wrapper (:mod:`kdlab.methods.fusion.base`).

Clark et al., "BAM! Born-Again Multi-Task Networks for Natural Language Understanding", ACL 2019, arXiv 1907.04829:
``alpha = alpha_start + (alpha_end - alpha_start) * progress``, 1 -> 0, one ratio for every sample. A constant ratio
equal to the inner method's own (``alpha_start = alpha_end = w_kd / (w_kd + w_gt)``) returns the inner method's terms
exactly.

Reference: TGeo-KD's public code (Chengming0501/TGeo-KD@5a69cbe ``HIL/baseline_*.py``) for ANL's linear schedule.

Deviations:
- ANL anneals per step (``progress.fraction``), not per epoch as TGeo-KD's CIFAR code (``(200 - epoch) / 199``).
"""

from __future__ import annotations

from torch import Tensor

from kdlab.config import MethodConfig
from kdlab.losses import fusion as fusion_losses
from kdlab.method_configs.fusion import AnnealedFusionConfig
from kdlab.methods import register_method
from kdlab.methods.base import MAIN_STAGE, BuildContext
from kdlab.methods.fusion.base import SampleFusion, SampleTerms, _check_unit, _ratio_metrics
from kdlab.types import LossOut, StepIO


@register_method("anl_kd", description="ANL-KD: the KD/CE ratio anneals linearly from 1 to 0 (teacher annealing)")
class AnnealedFusion(SampleFusion):
    """Teacher annealing: one ratio for all samples, moving linearly over training."""

    Config = AnnealedFusionConfig

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        _check_unit("alpha_start", cfg.alpha_start)
        _check_unit("alpha_end", cfg.alpha_end)

    def _alpha(self, io: StepIO) -> float:
        return fusion_losses.anneal_ratio(io.progress.fraction, self.cfg.alpha_start, self.cfg.alpha_end)

    def ratio(self, io: StepIO, terms: SampleTerms) -> Tensor:
        return terms.kd.new_full(terms.kd.shape, self._alpha(io))

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        if io.progress.stage == MAIN_STAGE and cfg.alpha_start == cfg.alpha_end:
            # a constant ratio equal to the inner method's own (w_kd / (w_kd + w_gt)) is the inner method, exactly
            terms = self.sample_terms(io)
            if cfg.alpha_start == terms.kd_weight / (terms.kd_weight + terms.gt_weight):
                out = self.inner.loss(io)
                ratio = terms.kd.new_full(terms.kd.shape, cfg.alpha_start)
                metrics = _ratio_metrics(ratio, io, cfg.histogram_bins, num_classes=self.num_classes)
                return LossOut(out.terms, {**out.metrics, **metrics})
        return super().loss(io)
