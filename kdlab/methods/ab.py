"""``ab``: Heo, Lee, Yun, Choi, "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden
Neurons", AAAI 2019, arXiv 1811.03233.

Objective, in two stages:

- initialisation (``init_epochs`` epochs, the student and the connectors ``r_i`` trained together)::

      ab_weight * sum_{i=1..n} 2^(i-n) / B * 3/1000 * sum [ (r_i(f_s^i) + m)^2 [r_i(f_s^i) > -m, f_t^i <= 0]
                                                          + (r_i(f_s^i) - m)^2 [r_i(f_s^i) <= m, f_t^i > 0] ]

  with ``f^i`` the pre-activation map of stage ``i`` (``stagei.pre``) and the margin ``m = 1``
  (:func:`kdlab.losses.activation_boundary`): the student learns on which side of zero each teacher neuron is;
- main stage: ``ce_weight * CE(z_s, y)`` alone.

Reference: HobbitLong/RepDistiller@b84f547 ``distiller_zoo/AB.py::ABLoss`` (margin 1, stage weights, ``/ B * 3 /
1000``), ``models/util.py::Connector`` (``ConvReg(use_relu=False)`` per stage, an identity where the shapes match),
``helper/pretrain.py::init`` (the init stage: ``preact`` ``feat[1:-1]`` of both models, SGD momentum 0.9, weight
decay 5e-4 at the run's learning rate, ``--init_epochs 30``, the connector and the student's feature modules
trained, the loss an unweighted sum over stages) and ``train_student.py`` / ``helper/loops.py`` (run as ``--distill
abound -a 0 -b 1``: the main stage's distillation term is ``loss_kd = 0``, so the main stage is CE alone and ``-b``
has no effect). Connectors for resnet32x4 -> resnet8x4: all identities (every stage has equal shapes), 0 parameters.

Deviations:
- The init stage's default length is a fraction of the run (:mod:`kdlab.schedule`'s rule: 30 / 240 of ``train.epochs``
  in whole epochs), not a fixed 30 epochs: a 240-epoch run gets the reference's 30, a 20-epoch run 3, where a fixed 30
  would be longer than the run it prepares. The CIFAR-100 recipes set 30 explicitly.
- The init stage's optimiser holds every student parameter (``trains="all"``) where the reference's holds the
  feature modules only (``get_feat_modules()``, without the classifier); the classifier gets no gradient from the AB
  loss, and the optimiser skips a parameter without a gradient (no momentum, no weight decay), so the updates are
  the same.
- The connectors stay in the main stage's optimiser (the reference leaves them out); they get no gradient there
  (the main loss is CE alone), so the optimiser skips them and they never change after the init stage. A
  data-parallel wrapper must therefore allow unused parameters in the main stage.
- A model without pre-activation taps (MobileNetV2, whose stages end in a linear bottleneck) contributes its stage
  outputs ``stageK``, which is what the reference's MobileNetV2 returns when asked for ``preact`` features.
- A connector is the identity when the two maps have equal ``(C, H, W)`` (the reference compares ``C`` and ``H``);
  a pair with different stage counts, or spatial sizes a connector cannot map, fails when the run is built (the
  reference asserts or raises ``NotImplemented``).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from kdlab import losses
from kdlab.method_configs.ab import ABConfig
from kdlab.methods import register_method
from kdlab.methods._feature import stage_taps
from kdlab.methods._init_stage import INIT_STAGE, InitStageMethod
from kdlab.methods.base import BuildContext
from kdlab.methods.fitnet import ConvReg
from kdlab.types import LossOut, StepIO


def preact_stage_taps(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """``stage1`` .. ``stageN`` of a model, each replaced by its pre-activation tap ``stageK.pre`` where provided."""
    return [f"{t}.pre" if f"{t}.pre" in shapes else t for t in stage_taps(shapes)]


@register_method(
    "ab", description="AB: activation boundaries of pre-activations in an init stage (student + connectors), then CE"
)
class AB(InitStageMethod):
    """Activation-boundary transfer: an init stage that trains the student (through connectors) to reproduce the
    teacher's activation pattern at every stage, then plain cross-entropy training.

    ``adapters["connectors"]`` holds one connector per stage pair (``ConvReg(relu=False)``: conv, BN; ``nn.Identity``
    where the shapes match), mapping ``[B, C_s, H_s, W_s]`` -> ``[B, C_t, H_t, W_t]``.
    """

    Config = ABConfig
    init_trains = "all"  # the student and the connectors together

    def __init__(self, cfg: Config, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        self.student_tap_names, self.teacher_tap_names = self.resolve_stage_taps(
            cfg.student_taps or preact_stage_taps(self.s_shapes), cfg.teacher_taps or preact_stage_taps(self.t_shapes)
        )
        connectors = nn.ModuleList()
        for s_tap, t_tap in zip(self.student_tap_names, self.teacher_tap_names):
            s_shape, t_shape = self.s_shapes[s_tap], self.t_shapes[t_tap]
            if tuple(s_shape) == tuple(t_shape):
                connectors.append(nn.Identity())
                continue
            try:
                connectors.append(ConvReg(s_shape, t_shape, relu=False))
            except ValueError as err:
                raise self.pair_error(str(err), [s_tap], [t_tap]) from None
        self.adapters["connectors"] = connectors

    def loss(self, io: StepIO) -> LossOut:
        """Init stage: ``{"ab": ...}``; main stage: ``{"ce": ...}``."""
        if io.progress.stage != INIT_STAGE:
            return LossOut({"ce": self.ce(io)})
        s_feats = [r(io.s.taps[t]) for r, t in zip(self.adapters["connectors"], self.student_tap_names)]
        t_feats = [io.t.taps[t] for t in self.teacher_tap_names]
        term = losses.activation_boundary(s_feats, t_feats, self.cfg.margin)
        return LossOut({"ab": self.cfg.ab_weight * term})
