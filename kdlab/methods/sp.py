"""``sp``: Tung, Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019, arXiv 1907.09682.

Objective: ``ce_weight * CE(z_s, y) + sp_weight * ||normalize(G_t) - normalize(G_s)||_F^2 / B^2`` with the
``[B, B]`` Gram matrix ``G = F F^T`` of the last stage map flattened per sample and row-wise L2 normalisation
(:func:`kdlab.losses.sp`).

Reference: megvii-research/mdistiller@a08d46f ``mdistiller/distillers/SP.py`` (``feats[-1]``, CE 1, feature weight
3000) and HobbitLong/RepDistiller@b84f547 ``distiller_zoo/SP.py`` (``feat[-2]``, the same map), run as
``--distill similarity -a 0 -b 3000`` (no KD term). No learnable parts; any pair of models works.

Deviations: none (the map is named: ``student_tap``/``teacher_tap``, default ``last`` = ``stageN``).
"""

from __future__ import annotations

from kdlab import losses
from kdlab.method_configs.sp import SPConfig
from kdlab.methods import register_method
from kdlab.methods._feature import FeatureMethod
from kdlab.methods.base import BuildContext
from kdlab.types import LossOut, StepIO


@register_method("sp", description="Similarity-preserving KD: CE + MSE of row-normalised batch similarity matrices")
class SP(FeatureMethod):
    """Similarity-preserving distillation on one map (the last stage)."""

    Config = SPConfig

    def __init__(self, cfg: Config, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        self.student_tap_names = [self.resolve_tap("student", cfg.student_tap)]
        self.teacher_tap_names = [self.resolve_tap("teacher", cfg.teacher_tap)]

    def loss(self, io: StepIO) -> LossOut:
        s_feat = io.s.taps[self.student_tap_names[0]]
        t_feat = io.t.taps[self.teacher_tap_names[0]]
        return LossOut({"ce": self.ce(io), "sp": self.cfg.sp_weight * losses.sp(s_feat, t_feat)})
