"""``nst``: Huang, Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", arXiv 1707.01219
(2017).

Objective: ``ce_weight * CE(z_s, y) + nst_weight * sum_stages MMD^2(F_s, F_t)`` with the polynomial kernel
``k(a, b) = (a . b)^2`` over the channel maps flattened over ``H*W`` and L2-normalised, the larger map of each pair
pooled to the smaller: ``MMD^2 = mean k(t, t) + mean k(s, s) - 2 mean k(s, t)`` (:func:`kdlab.losses.nst`).

Reference: megvii-research/mdistiller@a08d46f ``mdistiller/distillers/NST.py`` (``feats[1:]``, CE 1, feature
weight 50) and HobbitLong/RepDistiller@b84f547 ``distiller_zoo/NST.py`` (``feat[1:-1]``, ``full_loss``, the same
value), run as ``--distill nst -a 0 -b 50`` (no KD term). No learnable parts.

Deviations:
- Taps: every stage by default; a pair with different stage counts fails when the run is built (the references
  ``zip`` to the shorter list), unless ``student_taps``/``teacher_taps`` pair them explicitly.
- Pooling to the smaller map's ``(H, W)`` rather than ``(H, H)`` (the same for square maps).
"""

from __future__ import annotations

from kdlab import losses
from kdlab.method_configs.nst import NSTConfig
from kdlab.methods import register_method
from kdlab.methods._feature import FeatureMethod
from kdlab.methods.base import BuildContext
from kdlab.types import LossOut, StepIO


@register_method("nst", description="Neuron selectivity transfer: CE + polynomial-kernel MMD of channel maps")
class NST(FeatureMethod):
    """Neuron selectivity transfer over paired stage maps."""

    Config = NSTConfig

    def __init__(self, cfg: Config, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        self.student_tap_names, self.teacher_tap_names = self.resolve_stage_taps(cfg.student_taps, cfg.teacher_taps)

    def loss(self, io: StepIO) -> LossOut:
        s_feats = [io.s.taps[t] for t in self.student_tap_names]
        t_feats = [io.t.taps[t] for t in self.teacher_tap_names]
        return LossOut({"ce": self.ce(io), "nst": self.cfg.nst_weight * losses.nst(s_feats, t_feats)})
