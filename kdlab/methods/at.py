"""``at``: Zagoruyko, Komodakis, "Paying More Attention to Attention: Improving the Performance of Convolutional
Neural Networks via Attention Transfer", ICLR 2017, arXiv 1612.03928.

Objective: ``ce_weight * CE(z_s, y) + at_weight * sum_stages mean (a(f_s) - a(f_t))^2`` with the attention map
``a(f) = normalize(mean_c f^p)`` flattened per sample, p = 2, the larger map of each pair pooled to the smaller
(:func:`kdlab.losses.at`).

Reference: megvii-research/mdistiller@a08d46f ``mdistiller/distillers/AT.py`` (``feats[1:]``, p 2, CE 1, feature
weight 1000) and HobbitLong/RepDistiller@b84f547 ``distiller_zoo/AT.py`` (``feat[1:-1]``, the same maps), run as
``--distill attention -a 0 -b 1000`` (no KD term). No learnable parts.

Deviations:
- Taps: every stage ``stage1`` .. ``stageN`` of each model by default (the references' ``feat[1:-1]``); a pair
  with different stage counts fails when the run is built (the references silently ``zip`` to the shorter list),
  unless ``student_taps``/``teacher_taps`` pair them explicitly.
- Pooling to the smaller map's ``(H, W)`` rather than ``(H, H)`` (the same for square maps).
"""

from __future__ import annotations

from kdlab import losses
from kdlab.method_configs.at import ATConfig
from kdlab.methods import register_method
from kdlab.methods._feature import FeatureMethod
from kdlab.methods.base import BuildContext
from kdlab.types import LossOut, StepIO


@register_method("at", description="Attention transfer: CE + MSE of normalised spatial attention maps per stage")
class AT(FeatureMethod):
    """Attention transfer over paired stage maps."""

    dense_outputs = True  # feature maps of any stride; the CE term is dense-aware (io.cross_entropy)

    Config = ATConfig

    def __init__(self, cfg: Config, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        self.student_tap_names, self.teacher_tap_names = self.resolve_stage_taps(cfg.student_taps, cfg.teacher_taps)

    def loss(self, io: StepIO) -> LossOut:
        s_feats = [io.s.taps[t] for t in self.student_tap_names]
        t_feats = [io.t.taps[t] for t in self.teacher_tap_names]
        return LossOut({"ce": self.ce(io), "at": self.cfg.at_weight * losses.at(s_feats, t_feats, self.cfg.p)})
