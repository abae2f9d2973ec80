"""``rkd``: Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019, arXiv 1904.05068.

Objective: ``ce_weight * CE(z_s, y) + rkd_weight * (distance_weight * L_dist + angle_weight * L_angle)`` on the
pooled embeddings, with ``L_dist`` the smooth-L1 gap of mean-normalised pairwise distances and ``L_angle`` the
smooth-L1 gap of the cosines of all sample triples (:func:`kdlab.losses.rkd`).

Reference: megvii-research/mdistiller@a08d46f ``mdistiller/distillers/RKD.py::rkd_loss`` (``pooled_feat``, distance
weight 25, angle weight 50, feature weight 1, CE 1) and HobbitLong/RepDistiller@b84f547 ``distiller_zoo/RKD.py``
(``feat[-1]``, identical values), run as ``--distill rkd -a 0 -b 1`` (no KD term). No learnable parts; any pair of
models works.

Deviations: none (the taps are named: ``student_tap``/``teacher_tap``, default ``pool``; spatial taps are
flattened as in the references).
"""

from __future__ import annotations

from kdlab import losses
from kdlab.method_configs.rkd import RKDConfig
from kdlab.methods import register_method
from kdlab.methods._feature import FeatureMethod
from kdlab.methods.base import BuildContext
from kdlab.types import LossOut, StepIO


@register_method("rkd", description="Relational KD: CE + distance and angle relations of pooled embeddings")
class RKD(FeatureMethod):
    """Relational knowledge distillation (distance-wise and angle-wise potentials)."""

    Config = RKDConfig

    def __init__(self, cfg: Config, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        self.student_tap_names = [self.resolve_tap("student", cfg.student_tap)]
        self.teacher_tap_names = [self.resolve_tap("teacher", cfg.teacher_tap)]

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        s_embed = io.s.taps[self.student_tap_names[0]]
        t_embed = io.t.taps[self.teacher_tap_names[0]]
        term = losses.rkd(s_embed, t_embed, cfg.distance_weight, cfg.angle_weight)
        return LossOut({"ce": self.ce(io), "rkd": cfg.rkd_weight * term})
