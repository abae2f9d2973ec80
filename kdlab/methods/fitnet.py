"""``fitnet``: Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015,
arXiv 1412.6550.

Objective: ``ce_weight * CE(z_s, y) + hint_weight * mean (r(f_s) - f_t)^2`` with ``f`` the hint tap (``stage2``)
and ``r`` a learnable convolutional regressor (:class:`ConvReg`), trained with the student
(:func:`kdlab.losses.hint`).

Reference: megvii-research/mdistiller@a08d46f ``mdistiller/distillers/FitNet.py`` and ``_common.py::ConvReg``
(hint layer 2, CE 1, feature weight 100); HobbitLong/RepDistiller@b84f547 ``distiller_zoo/FitNet.py`` and
``models/util.py::ConvReg``, run as ``--distill hint -a 0 -b 100 --hint_layer 2`` (no KD term; use the ``sum``
combinator to add one). Regressor for resnet32x4 -> resnet8x4: 16,768 parameters.

Deviations:
- The hint tap is named (``student_tap``/``teacher_tap``, default ``stage2`` for both, the references'
  ``feat[2]``) and may differ between student and teacher.
- An unsupported pair of spatial sizes (student smaller than the teacher by other than 2x) fails when the run is
  built, with the taps and shapes in the message, where the references raise a bare ``NotImplemented``.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdlab import losses
from kdlab.method_configs.fitnet import FitNetConfig
from kdlab.methods import register_method
from kdlab.methods._feature import FeatureMethod
from kdlab.methods.base import BuildContext
from kdlab.types import LossOut, StepIO


class ConvReg(nn.Module):
    """FitNet's convolutional regressor from a student map to a teacher map's shape: conv, BN, optional ReLU.

    The convolution follows the references by spatial size (``s_H`` student, ``t_H`` teacher):

    - ``s_H == 2 * t_H``: 3x3 conv, stride 2, padding 1;
    - ``2 * s_H == t_H``: 4x4 transposed conv, stride 2, padding 1;
    - ``s_H >= t_H`` otherwise (``s_H == t_H`` included): a conv with kernel ``(1 + s_H - t_H, 1 + s_W - t_W)``,
      i.e. 1x1 for equal sizes;
    - anything else is an error.

    All convolutions have a bias; BN over the teacher's channels follows; ``relu=False`` gives AB's connector.

    Args:
        s_shape: ``(C_s, H_s, W_s)`` of the student map (no batch dimension).
        t_shape: ``(C_t, H_t, W_t)`` of the teacher map.
        relu: apply a ReLU after the BN (FitNet) or not (AB's connector).

    Shapes:
        ``[B, C_s, H_s, W_s]`` -> ``[B, C_t, H_t, W_t]``.
    """

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...], relu: bool = True) -> None:
        super().__init__()
        if len(s_shape) != 3 or len(t_shape) != 3:
            raise ValueError(f"ConvReg needs (C, H, W) maps, got student {s_shape} and teacher {t_shape}")
        s_c, s_h, s_w = s_shape
        t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(
                f"ConvReg cannot map a {s_h}x{s_w} student map to a {t_h}x{t_w} teacher map (the student may be "
                "larger, equal, or half the teacher's size)"
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, s_feat: Tensor) -> Tensor:
        """``[B, C_s, H_s, W_s]`` -> ``[B, C_t, H_t, W_t]``."""
        return self.relu(self.bn(self.conv(s_feat)))


@register_method("fitnet", description="FitNet: CE + MSE between a regressed student map and the teacher's (hint)")
class FitNet(FeatureMethod):
    """Hint learning: a convolutional regressor maps the student's hint map onto the teacher's."""

    dense_outputs = True  # feature maps of any stride; the CE term is dense-aware (io.cross_entropy)

    Config = FitNetConfig

    def __init__(self, cfg: Config, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        s_tap = self.resolve_tap("student", cfg.student_tap)
        t_tap = self.resolve_tap("teacher", cfg.teacher_tap)
        self.student_tap_names, self.teacher_tap_names = [s_tap], [t_tap]
        try:
            self.adapters["regressor"] = ConvReg(self.s_shapes[s_tap], self.t_shapes[t_tap])
        except ValueError as err:
            raise self.pair_error(str(err), [s_tap], [t_tap]) from None

    def loss(self, io: StepIO) -> LossOut:
        s_feat = self.adapters["regressor"](io.s.taps[self.student_tap_names[0]])
        t_feat = io.t.taps[self.teacher_tap_names[0]]
        return LossOut({"ce": self.ce(io), "hint": self.cfg.hint_weight * losses.hint(s_feat, t_feat)})
