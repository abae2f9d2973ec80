"""``vid``: Ahn, Hu, Damianou, Lawrence, Dai, "Variational Information Distillation for Knowledge Transfer",
CVPR 2019, arXiv 1904.05835.

Objective: per stage pair ``k``, a regressor ``mu_k`` of the student's map predicts the teacher's map under a
Gaussian with a learned per-channel variance ``var_c = softplus(log_scale_c) + eps``::

    L = ce_weight * CE + vid_weight * sum_k mean 0.5 * ((mu_k(f_s) - f_t)^2 / var + log var)

(:func:`kdlab.losses.vid_nll`). The larger of the two maps is average-pooled to the smaller's size first.

Reference: HobbitLong/RepDistiller@b84f547 ``distiller_zoo/VID.py`` (``VIDLoss``) with ``train_student.py``
(pairs ``feat[1:-1]``, i.e. the stage outputs ``stage1..N`` in order; README ``-a 0 -b 1``); megvii-research/
mdistiller@a08d46f ``mdistiller/distillers/VID.py`` computes the same loss.

- Regressor per stage pair: ``conv1x1(C_s -> C_t) - ReLU - conv1x1(C_t -> C_t) - ReLU - conv1x1(C_t -> C_t)``, no
  biases (258,048 parameters for resnet32x4 -> resnet8x4), in ``adapters["regressors"]``.
- ``log_scale``: one per teacher channel, initialised to ``log(exp(init_variance - eps) - 1)`` so that the initial
  variance is ``init_variance`` (5), registered in ``adapters["log_scales"]`` (trained with the student, with the
  run's weight decay, as RepDistiller's optimiser does).
- Stage pairs: ``stageK`` of the student with ``stageK`` of the teacher for ``K = 1 .. min(N_s, N_t)`` (the
  reference's ``zip`` over both feature lists).

Deviations:
- None from RepDistiller. mdistiller keeps the ``log_scale`` tensors in a plain Python list, so they are neither
  registered nor optimised and its variances stay at 5 for the whole run; kdlab follows RepDistiller and the paper
  (the variances train).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab import losses
from kdlab.config import MethodConfig
from kdlab.method_configs.vid import VIDConfig
from kdlab.methods import register_method
from kdlab.methods.base import BuildContext, DistillMethod
from kdlab.types import LossOut, Needs, StepIO

_STAGE = re.compile(r"stage(\d+)")


def stage_taps(taps: object) -> list[str]:
    """``stage1 .. stageN`` (post-activation stage outputs) among tap names, in stage order."""
    found = sorted((int(m.group(1)), name) for name in taps if (m := _STAGE.fullmatch(name)))
    return [name for _, name in found]


def pool_to_smaller(s_feat: Tensor, t_feat: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the spatially larger of two ``[B, C, H, W]`` maps to the other's ``H x W``."""
    (sh, sw), (th, tw) = s_feat.shape[-2:], t_feat.shape[-2:]
    if sh > th:
        s_feat = F.adaptive_avg_pool2d(s_feat, (th, tw))
    elif sh < th:
        t_feat = F.adaptive_avg_pool2d(t_feat, (sh, sw))
    return s_feat, t_feat


def _conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)


@register_method("vid", description="VID: Gaussian likelihood of teacher maps under regressed student maps")
class VID(DistillMethod):
    """Variational information distillation on every stage output."""

    mixed_labels = "soft"

    Config = VIDConfig

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        if not ctx.teacher_shapes:
            raise ValueError("vid distils from a teacher, but the run has none: set model.teachers")
        s_taps, t_taps = stage_taps(ctx.student_shapes), stage_taps(ctx.teacher_shapes[0])
        n = min(len(s_taps), len(t_taps))
        if n == 0:
            raise ValueError("vid: the student or the teacher has no stage taps (stage1 .. stageN)")
        self.pairs = list(zip(s_taps[:n], t_taps[:n]))
        init = math.log(math.exp(cfg.init_variance - cfg.eps) - 1.0)
        regressors, log_scales = nn.ModuleList(), nn.ParameterList()
        for s_tap, t_tap in self.pairs:
            c_s, c_t = ctx.student_shapes[s_tap][0], ctx.teacher_shapes[0][t_tap][0]
            regressors.append(
                nn.Sequential(_conv1x1(c_s, c_t), nn.ReLU(), _conv1x1(c_t, c_t), nn.ReLU(), _conv1x1(c_t, c_t))
            )
            log_scales.append(nn.Parameter(torch.full((c_t,), init, device=ctx.device)))
        self.adapters["regressors"] = regressors.to(ctx.device)
        self.adapters["log_scales"] = log_scales

    def needs(self) -> Needs:
        return Needs(student_taps=frozenset(s for s, _ in self.pairs), teacher_taps=frozenset(t for _, t in self.pairs))

    def variances(self) -> list[Tensor]:
        """Current per-channel variances ``softplus(log_scale) + eps``, one ``[C_t]`` tensor per stage pair."""
        return [F.softplus(p.detach()) + self.cfg.eps for p in self.adapters["log_scales"]]

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        total: Tensor | float = 0.0
        for (s_tap, t_tap), regressor, log_scale in zip(
            self.pairs, self.adapters["regressors"], self.adapters["log_scales"]
        ):
            s_feat, t_feat = pool_to_smaller(io.s.taps[s_tap], io.t.taps[t_tap])
            total = total + losses.vid_nll(regressor(s_feat), t_feat, log_scale, cfg.eps)
        return LossOut({"ce": cfg.ce_weight * io.cross_entropy(io.s.logits), "vid": cfg.vid_weight * total})
