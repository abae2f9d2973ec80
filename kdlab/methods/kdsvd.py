"""``kdsvd``: Lee, Kim, Song, "Self-supervised Knowledge Distillation Using Singular Value Decomposition", ECCV
2018, arXiv 1807.06819.

Objective: ``ce_weight * CE(z_s, y) + kdsvd_weight * sum_i ||RBF(V_s^i, V_s^{i-1}) - RBF(V_t^i, V_t^{i-1})||^2 / B``
over consecutive stages, with ``V`` the leading right singular vectors of each sample's stage map (k for the teacher;
the best-matching, sign-aligned of k + 3 for the student), scaled by the normalised teacher singular values, and
``RBF(a, b) = exp(-(a - b)^2 / 8)`` for every pair of vector entries (:func:`kdlab.losses.kdsvd`, k = 1).

Reference: HobbitLong/RepDistiller@b84f547 ``distiller_zoo/KDSVD.py`` (``feat[1:-1]``, k 1, weight 1; run as
``--distill kdsvd -a 0 -b 1``) and megvii-research/mdistiller@a08d46f ``mdistiller/distillers/KDSVD.py``
(``feats[1:]``, k 1, CE 1, feature weight 1). The CRD benchmark tables have no KDSVD row, so there is no recipe.

Which variant: the references reshape the map differently and give different values. kdlab follows RepDistiller
(``layout: channels``, each map as an ``[H*W, C]`` matrix, singular vectors in channel space) because that is what
the paper's TensorFlow code (sseung0703/SSKD_SVD) computes on its NHWC maps; mdistiller's ``view(B, C*H, W)``
applies that reshape to an NCHW map, which puts the singular vectors in the space of image columns. ``layout:
width`` reproduces mdistiller. The channels layout needs equal channel counts at every paired stage (e.g.
resnet32x4 -> resnet8x4, wrn_40_2 -> wrn_16_2, vgg13 -> vgg8), the width layout equal widths; other pairs fail when
the run is built. No learnable parts.

Deviations:
- The teacher's singular vectors get a canonical sign (largest-magnitude entry positive). The references use the
  sign LAPACK happens to return, so their values differ between machines; the student's vectors are aligned to the
  teacher's in both.
- Gradients through the student's singular vectors are computed for the kept vectors only
  (:func:`kdlab.losses.top_right_singular_vectors`), so repeated discarded singular values (the zero singular
  values of maps with dead ReLU channels) do not make them NaN, as the full SVD backward of the references does.
- A non-finite entry of the relation term counts 0 in the value (as in the references) and gets no gradient (the
  references' ``where`` passes ``0 * NaN = NaN`` back through it).
- A student vector that ties for the largest ``|cos|`` with a teacher vector is picked once (the references add
  all tied vectors); the map is reshaped with its ``H * W`` (the references assume ``W == H``); no float32 cast.
"""

from __future__ import annotations

from kdlab import losses
from kdlab.method_configs.kdsvd import KDSVDConfig
from kdlab.methods import register_method
from kdlab.methods._feature import FeatureMethod
from kdlab.methods.base import BuildContext
from kdlab.types import LossOut, StepIO


# The contract tests' default tiny pair (convnet_xs -> convnet_s) has different channel counts; KDSVD is tested
# with a student of the teacher's architecture.
@register_method(
    "kdsvd",
    description="KDSVD: CE + RBF relations of leading singular vectors between consecutive stages",
    test_student="convnet_s",
)
class KDSVD(FeatureMethod):
    """Self-supervised KD with singular value decomposition over paired stage maps."""

    Config = KDSVDConfig

    def __init__(self, cfg: Config, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        if cfg.k < 1:
            raise ValueError(f"kdsvd: k must be >= 1, got {cfg.k}")
        s_taps, t_taps = self.resolve_stage_taps(cfg.student_taps, cfg.teacher_taps)
        if len(s_taps) < 2:
            raise self.pair_error("KDSVD relates consecutive maps and needs at least two", s_taps, t_taps)
        pairs = [(self.s_shapes[s], self.t_shapes[t]) for s, t in zip(s_taps, t_taps)]
        if any(len(s) != 3 or len(t) != 3 for s, t in pairs):
            raise self.pair_error("KDSVD needs spatial maps [C, H, W]", s_taps, t_taps)
        fits = {layout: all(s[dim] == t[dim] for s, t in pairs) for layout, dim in (("channels", 0), ("width", 2))}
        if not fits[cfg.layout]:
            what = "channel counts" if cfg.layout == "channels" else "widths"
            other = "width" if cfg.layout == "channels" else "channels"
            hint = f" (method.layout={other} would fit this pair)" if fits[other] else ""
            raise self.pair_error(
                f"layout {cfg.layout!r} needs equal {what} at every paired map; pick taps or models with equal "
                f"{what}{hint}",
                s_taps,
                t_taps,
            )
        self.student_tap_names, self.teacher_tap_names = s_taps, t_taps

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        s_feats = [io.s.taps[t] for t in self.student_tap_names]
        t_feats = [io.t.taps[t] for t in self.teacher_tap_names]
        term = losses.kdsvd(s_feats, t_feats, cfg.k, layout=cfg.layout)
        return LossOut({"ce": self.ce(io), "kdsvd": cfg.kdsvd_weight * term})
