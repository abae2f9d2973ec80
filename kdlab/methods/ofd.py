"""``ofd``: Heo, Kim, Yun, Park, Kwak, Choi, "A Comprehensive Overhaul of Feature Distillation", ICCV 2019,
arXiv 1904.01866.

Objective: per stage pair ``k`` (pre-activation maps), a connector ``r_k`` (conv1x1 + BN) maps the student's map to
the teacher's width, and a partial L2 distance (:func:`kdlab.losses.ofd`) ignores the student where both are below
the teacher's per-channel margin ``m`` (:func:`kdlab.losses.ofd_margin`, from the teacher's BN before the ReLU)::

    L = ce_weight * CE + ofd_weight * sum_{k=1..n} d_p(r_k(f_s^k), pool(f_t^k); m_k) / 2^(n - k)

where ``pool`` average-pools the teacher's map to the student's spatial size and ``d_p`` sums over ``C, H, W`` and
averages over the batch.

Reference: megvii-research/mdistiller@a08d46f ``mdistiller/distillers/OFD.py`` (``OFD``, ``ConnectorConvBN``,
``feat_loss``) with ``configs/cifar100/ofd.yaml`` (CE 1, FEAT_WEIGHT 0.001, connector kernel 1).

- Taps: the ``stageK.pre`` taps of both models (``preact_feats[1:]``), aligned from the deepest stage when the two
  models have different numbers of stages (the reference's ``_align_list``).
- Connector per pair: ``conv1x1(C_s -> C_t, no bias) + BN(C_t)``, conv weights ``N(0, 2 / C_t)``, BN ``1, 0``
  (86,912 parameters for resnet32x4 -> resnet8x4), in ``adapters["connectors"]``.
- Margins: from the teacher's BN that feeds the ReLU at each ``stageK.pre`` tap, which the model exposes through
  :meth:`kdlab.models.base.TapModel.bn_before_relu` (the zoo's CIFAR/ImageNet ResNets, WRN, VGG, ShuffleNetV1,
  MobileNetV1 and the small ConvNets; handed over as ``BuildContext.teacher_bn_before_relu``). They are computed once
  at build time from the loaded teacher and kept as buffers (in the state dict). A teacher that cannot say which BN
  precedes a tap's ReLU (ShuffleNetV2, timm and hook-based models) fails the build with a :class:`TapError`.

Deviations:
- mdistiller's ``OFD.train()`` puts the teacher in training mode as well (its BN layers then normalise with batch
  statistics and update their running averages); kdlab's teachers always stay in eval mode.
- The margins are paired with the aligned teacher stages; mdistiller indexes its margin list from the first stage
  even when ``_align_list`` dropped leading stages (only matters for pairs with different stage counts).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab import losses
from kdlab.config import MethodConfig
from kdlab.method_configs.ofd import OFDConfig
from kdlab.methods import register_method
from kdlab.methods.base import BuildContext, DistillMethod
from kdlab.models.base import TapError, pre_tap_stage
from kdlab.types import LossOut, Needs, StepIO


def pre_taps(taps: object) -> list[str]:
    """``stage1.pre .. stageN.pre`` among tap names, in stage order."""
    found = sorted((k, name) for name in taps if (k := pre_tap_stage(name)) is not None)
    return [name for _, name in found]


def _connector(c_in: int, c_out: int) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / c_out))
    bn = nn.BatchNorm2d(c_out)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


@register_method("ofd", description="OFD: partial L2 on pre-activations with margins from the teacher's BN")
class OFD(DistillMethod):
    """Overhaul of feature distillation on the pre-activation stage outputs."""

    mixed_labels = "soft"

    Config = OFDConfig

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        if not ctx.teacher_shapes:
            raise ValueError("ofd distils from a teacher, but the run has none: set model.teachers")
        s_taps, t_taps = pre_taps(ctx.student_shapes), pre_taps(ctx.teacher_shapes[0])
        n = min(len(s_taps), len(t_taps))
        if n == 0:
            raise TapError(
                "ofd needs pre-activation taps (stageK.pre) of the student and the teacher; the student provides "
                f"{s_taps or 'none'}, the teacher {t_taps or 'none'}"
            )
        self.pairs = list(zip(s_taps[-n:], t_taps[-n:]))
        bns = ctx.teacher_bn_before_relu[0] if ctx.teacher_bn_before_relu else {}
        connectors = nn.ModuleList()
        for i, (s_tap, t_tap) in enumerate(self.pairs):
            c_s, c_t = ctx.student_shapes[s_tap][0], ctx.teacher_shapes[0][t_tap][0]
            bn = bns.get(t_tap)
            if bn is None or getattr(bn, "num_features", None) != c_t:
                raise TapError(
                    f"ofd: the teacher does not expose the BatchNorm before the ReLU of its tap {t_tap!r} "
                    "(TapModel.bn_before_relu), which OFD's margins need; teachers that do: the CIFAR and ImageNet "
                    "ResNets, WRN, VGG, ShuffleNetV1, MobileNetV1 and the small ConvNets"
                )
            self.register_buffer(f"margin{i}", losses.ofd_margin(bn.weight, bn.bias).to(ctx.device))
            connectors.append(_connector(c_s, c_t))
        self.adapters["connectors"] = connectors.to(ctx.device)

    def needs(self) -> Needs:
        return Needs(student_taps=frozenset(s for s, _ in self.pairs), teacher_taps=frozenset(t for _, t in self.pairs))

    def margins(self) -> list[Tensor]:
        """The per-channel margins ``[C_t]`` of each stage pair."""
        return [getattr(self, f"margin{i}") for i in range(len(self.pairs))]

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        n = len(self.pairs)
        total: Tensor | float = 0.0
        for i, ((s_tap, t_tap), connector, margin) in enumerate(
            zip(self.pairs, self.adapters["connectors"], self.margins())
        ):
            source = connector(io.s.taps[s_tap])
            target = F.adaptive_avg_pool2d(io.t.taps[t_tap], source.shape[-2:])
            total = total + losses.ofd(source, target, margin) / 2 ** (n - i - 1)
        return LossOut({"ce": cfg.ce_weight * io.cross_entropy(io.s.logits), "ofd": cfg.ofd_weight * total})
