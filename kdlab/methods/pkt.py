"""``pkt``: Passalis, Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018,
arXiv 1803.10837.

Objective: ``ce_weight * CE(z_s, y) + pkt_weight * mean_{i,j} P_t log((P_t + eps) / (P_s + eps))`` with ``P`` the
row-normalised cosine similarities ``(cos + 1) / 2`` of the pooled embeddings within the batch
(:func:`kdlab.losses.pkt`, eps 1e-7).

Reference: megvii-research/mdistiller@a08d46f ``mdistiller/distillers/PKT.py::pkt_loss`` (``pooled_feat``, CE 1,
feature weight 30000) and HobbitLong/RepDistiller@b84f547 ``distiller_zoo/PKT.py`` (the author's code, identical
values), run as ``--distill pkt -a 0 -b 30000`` (no KD term). No learnable parts; any pair of models works.

Deviations: none (the taps are named: ``student_tap``/``teacher_tap``, default ``pool``; spatial taps are
flattened).
"""

from __future__ import annotations

from kdlab import losses
from kdlab.method_configs.pkt import PKTConfig
from kdlab.methods import register_method
from kdlab.methods._feature import FeatureMethod
from kdlab.methods.base import BuildContext
from kdlab.types import LossOut, StepIO


@register_method("pkt", description="Probabilistic KT: CE + KL between batch cosine-similarity distributions")
class PKT(FeatureMethod):
    """Probabilistic knowledge transfer on the pooled embeddings."""

    Config = PKTConfig

    def __init__(self, cfg: Config, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        self.student_tap_names = [self.resolve_tap("student", cfg.student_tap)]
        self.teacher_tap_names = [self.resolve_tap("teacher", cfg.teacher_tap)]

    def loss(self, io: StepIO) -> LossOut:
        s_embed = io.s.taps[self.student_tap_names[0]]
        t_embed = io.t.taps[self.teacher_tap_names[0]]
        return LossOut({"ce": self.ce(io), "pkt": self.cfg.pkt_weight * losses.pkt(s_embed, t_embed)})
