"""``srrl``: Yang, Martinez, Bulat, Tzimiropoulos, "Knowledge Distillation via Softmax Regression Representation
Learning", ICLR 2021 (OpenReview ZzwDy_wiWv; no arXiv version).

Objective: a connector ``r`` maps the student's pooled embedding to the teacher's width; it must match the teacher's
embedding (feature matching) and, through the teacher's frozen classifier ``g_t``, the teacher's logits (softmax
regression)::

    L = ce_weight * CE + kd_weight * KD_T + srrl_weight * (mse(r(f_s), f_t) + mse(g_t(r(f_s)), z_t))

(:func:`kdlab.losses.srrl`).

Reference: DefangChen/SimKD@2b389c3 ``models/util.py`` (``SRRL``), ``train_student.py`` and ``helper/loops.py``
(``criterion_kd = nn.MSELoss()`` applied to both pairs). The repository runs its baselines with ``-c 1 -d 1`` and
``T = 4`` and SRRL with ``beta = 1`` (``reference/methods.md`` (c)), hence the defaults CE 1, KD 1, SRRL 1.

- Connector: ``conv1x1(D_s -> D_t, no bias) + BN + ReLU`` applied to the pooled embedding viewed as a ``1 x 1`` map
  (``adapters["connector"]``).
- Teacher classifier: ``BuildContext.teacher_classifiers[0]``, the teacher's own final linear layer, held as a
  constant copy in a :class:`~kdlab.methods._teacher_head.FrozenHead` (the mechanism SimKD shares): buffers, not
  parameters, and not persistent, so it is never optimised, never receives gradients and is not duplicated in the
  method's state dict; gradients flow through it into the connector and the student only.

Deviations: none. (The SRRL paper's own code is not public; SimKD's re-implementation is the reference.)
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab import losses
from kdlab.config import MethodConfig
from kdlab.method_configs.srrl import SRRLConfig
from kdlab.methods import register_method
from kdlab.methods._teacher_head import FrozenHead
from kdlab.methods.base import BuildContext, DistillMethod
from kdlab.types import LossOut, Needs, StepIO


class Connector(nn.Module):
    """SRRL's connector: ``conv1x1(D_s -> D_t, no bias) + BN + ReLU`` on a vector seen as a ``1 x 1`` map.

    Shapes: ``[B, D_s]`` -> ``[B, D_t]``.
    """

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(dim_in, dim_out, kernel_size=1, bias=False), nn.BatchNorm2d(dim_out), nn.ReLU()
        )

    def forward(self, s_feat: Tensor) -> Tensor:
        """``[B, D_s]`` -> ``[B, D_t]``."""
        return self.body(s_feat.reshape(s_feat.shape[0], -1, 1, 1)).flatten(1)


@register_method("srrl", description="SRRL: feature matching + softmax regression through the teacher classifier")
class SRRL(DistillMethod):
    """Softmax regression representation learning on the pooled embeddings."""

    mixed_labels = "soft"

    Config = SRRLConfig

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        if not ctx.teacher_shapes or not ctx.teacher_classifiers:
            raise ValueError("srrl distils from a teacher (and reuses its classifier); set model.teachers")
        d_s = ctx.student_shapes["pool"][0]
        d_t = ctx.teacher_shapes[0]["pool"][0]
        self.adapters["connector"] = Connector(d_s, d_t).to(ctx.device)
        # buffers, not parameters (never optimised), not persistent (not in the state dict)
        self.head = FrozenHead(ctx.teacher_classifiers[0], d_t, "srrl", persistent=False)

    def needs(self) -> Needs:
        return Needs(student_taps=frozenset({"pool"}), teacher_taps=frozenset({"pool"}))

    def teacher_head(self, feat: Tensor) -> Tensor:
        """The teacher's classifier on ``[B, D_t]`` features -> ``[B, K]``, with its parameters held constant."""
        return self.head(feat)

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        s_feat = self.adapters["connector"](io.s.taps["pool"])
        t_logits = io.t.logits
        srrl = losses.srrl(s_feat, io.t.taps["pool"], self.teacher_head(s_feat), t_logits)
        s_logits = io.s.logits
        terms = {"ce": cfg.ce_weight * io.cross_entropy(s_logits)}
        if cfg.kd_weight:
            terms["kd"] = cfg.kd_weight * losses.kd(s_logits, io.teacher_logits(), cfg.temperature).mean()
        terms["srrl"] = cfg.srrl_weight * srrl
        return LossOut(terms)
