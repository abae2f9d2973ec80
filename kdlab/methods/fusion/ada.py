"""``ada_kd``: a per-sample ratio from the teacher's margin on the label, over a sample-fusion wrapper
(:mod:`kdlab.methods.fusion.base`).

Lukasik et al., "Teacher's pet: understanding and mitigating biases in distillation", TMLR 2022, arXiv 2106.10494, in
TGeo-KD's re-implementation: ``alpha_i = max(0, p_t(y_i) - mean_{j != y_i} p_t(j))``.

Reference: TGeo-KD's public code (Chengming0501/TGeo-KD@5a69cbe ``HIL/baseline_*.py``) for ADA's margin.

Deviations:
- ADA's ratio is computed every step from the teacher's logits of the batch (the same value as TGeo-KD's code, which
  precomputes it once, when the inputs are not augmented).
"""

from __future__ import annotations

from torch import Tensor

from kdlab.config import ConfigError, MethodConfig
from kdlab.losses import fusion as fusion_losses
from kdlab.method_configs.fusion import MarginFusionConfig
from kdlab.methods import register_method
from kdlab.methods.base import BuildContext
from kdlab.methods.fusion.base import SampleFusion, SampleTerms
from kdlab.types import StepIO


@register_method("ada_kd", description="ADA-KD: per-sample KD/CE ratio from the teacher's margin on the label")
class MarginFusion(SampleFusion):
    """Per-sample ratio from the teacher's confidence on the true class against the mean of the others."""

    Config = MarginFusionConfig

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        if cfg.margin_temperature <= 0:
            raise ConfigError(f"method.margin_temperature must be > 0, got {cfg.margin_temperature}")

    def ratio(self, io: StepIO, terms: SampleTerms) -> Tensor:
        return fusion_losses.teacher_margin_ratio(io.teacher_logits(), io.y, self.cfg.margin_temperature)
