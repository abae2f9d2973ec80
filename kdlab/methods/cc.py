"""``cc``: Peng, Jin, Liu, Li, Wu, Liu, Zhou, Zhang, "Correlation Congruence for Knowledge Distillation", ICCV
2019, arXiv 1904.01802.

Objective: ``ce_weight * CE(z_s, y) + cc_weight * mean_{i<B-1} sum_d delta_{i,d} delta_{i+1,d}`` with
``delta = |E_s(f_s) - E_t(f_t)|``, ``f`` the pooled embeddings and ``E`` learnable linear embeddings to 128
dimensions, one for the student and one for the teacher, without normalisation (:func:`kdlab.losses.cc`).

Reference: HobbitLong/RepDistiller@b84f547 ``distiller_zoo/CC.py::Correlation`` (the original authors' code, as
its docstring says) with ``models/util.py::LinearEmbed`` on ``feat[-1]`` for both networks, ``--feat_dim 128``,
run as ``--distill correlation -a 0 -b 0.02`` (no KD term). Both embeddings train with the student: for
resnet32x4 -> resnet8x4, 2 x 32,896 = 65,792 parameters.

Deviations: none (the embedded taps are named: ``student_tap``/``teacher_tap``, default ``pool``; a spatial tap is
flattened as ``LinearEmbed`` does).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from kdlab import losses
from kdlab.method_configs.cc import CCConfig
from kdlab.methods import register_method
from kdlab.methods._feature import FeatureMethod
from kdlab.methods.base import BuildContext
from kdlab.types import LossOut, StepIO


class LinearEmbed(nn.Module):
    """Flatten, then a linear layer (with bias), no normalisation: RepDistiller's ``LinearEmbed``.

    Args:
        dim_in: flattened input size ``D`` (e.g. the channels of ``pool``).
        dim_out: embedding size.

    Shapes:
        ``[B, ...]`` (``D`` elements per sample) -> ``[B, dim_out]``.
    """

    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, feat: Tensor) -> Tensor:
        """``[B, ...]`` -> ``[B, dim_out]``."""
        return self.linear(feat.reshape(feat.shape[0], -1))


@register_method("cc", description="Correlation congruence: CE + correlation of embedded student/teacher gaps")
class CC(FeatureMethod):
    """Correlation congruence on linearly embedded pooled features."""

    Config = CCConfig

    def __init__(self, cfg: Config, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        s_tap = self.resolve_tap("student", cfg.student_tap)
        t_tap = self.resolve_tap("teacher", cfg.teacher_tap)
        self.student_tap_names, self.teacher_tap_names = [s_tap], [t_tap]
        self.adapters["embed_student"] = LinearEmbed(math.prod(self.s_shapes[s_tap]), cfg.embed_dim)
        self.adapters["embed_teacher"] = LinearEmbed(math.prod(self.t_shapes[t_tap]), cfg.embed_dim)

    def loss(self, io: StepIO) -> LossOut:
        s_embed = self.adapters["embed_student"](io.s.taps[self.student_tap_names[0]])
        t_embed = self.adapters["embed_teacher"](io.t.taps[self.teacher_tap_names[0]])
        return LossOut({"ce": self.ce(io), "cc": self.cfg.cc_weight * losses.cc(s_embed, t_embed)})
