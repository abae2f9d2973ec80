"""``fsp``: Yim, Joo, Bae, Kim, "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and
Transfer Learning", CVPR 2017 (no arXiv version).

Objective, in two stages:

- initialisation (``init_epochs`` epochs, the student alone)::

      fsp_weight * sum_k mean_{b, i, j} (G_s^k[b, i, j] - G_t^k[b, i, j])^2,   G^k[b, i, j] = mean_hw f^{k+1}_i f^k_j

  over consecutive maps ``f^0 .. f^N`` = ``stem``, ``stage1`` .. ``stageN`` (the larger map of a pair pooled to the
  smaller; :func:`kdlab.losses.fsp`), which needs equal channel counts of student and teacher at every map;
- main stage: ``ce_weight * CE(z_s, y)`` alone.

Reference: HobbitLong/RepDistiller@b84f547 ``distiller_zoo/FSP.py`` (the FSP matrices of ``feat[:-1]``, i.e. the
stem and every stage, and the equal-channel check), ``helper/pretrain.py::init`` (the init stage: the student's
feature modules trained on the unweighted sum of the per-pair losses, SGD momentum 0.9, weight decay 5e-4 at the
run's learning rate, ``--init_epochs 30``) and ``train_student.py`` / ``helper/loops.py``: the README's command
``--distill fsp -a 0 -b 50`` multiplies a main-stage distillation term that is ``loss_kd = 0``, so the main stage is
CE alone and ``-b 50`` has no effect; kdlab follows that. No learnable parts (0 parameters for any pair).

The CRD tables have FSP numbers for the same-architecture pairs only (and N/A for wrn_40_2 -> wrn_40_1, whose
channel counts differ); pairs with different channel counts fail when the run is built.

Deviations:
- The init stage's default length is a fraction of the run (:mod:`kdlab.schedule`'s rule: 30 / 240 of ``train.epochs``
  in whole epochs), not a fixed 30 epochs: a 240-epoch run gets the reference's 30, a 20-epoch run 3, where a fixed 30
  would be longer than the run it prepares. The CIFAR-100 recipes set 30 explicitly.
- The init stage's optimiser holds every student parameter (``trains="all"``) where the reference's holds the
  feature modules only (``get_feat_modules()``); the classifier gets no gradient from the FSP loss and the optimiser
  skips parameters without one (no momentum, no weight decay), so the updates are the same.
- Pooling to the smaller map's ``(H, W)`` rather than ``(H, H)`` (the same for square maps).
"""

from __future__ import annotations

from collections.abc import Mapping

from kdlab import losses
from kdlab.method_configs.fsp import FSPConfig
from kdlab.methods import register_method
from kdlab.methods._feature import stage_taps
from kdlab.methods._init_stage import INIT_STAGE, InitStageMethod
from kdlab.methods.base import BuildContext
from kdlab.types import LossOut, StepIO


# The contract tests' default tiny pair (convnet_xs -> convnet_s) has different channel counts; FSP is tested with a
# student of the teacher's architecture.
@register_method(
    "fsp",
    description="FSP: match the Gram (FSP) matrices of consecutive maps in an init stage, then CE",
    test_student="convnet_s",
)
class FSP(InitStageMethod):
    """Flow of solution procedure: an init stage that matches the student's FSP matrices to the teacher's, then
    plain cross-entropy training. No adapters."""

    Config = FSPConfig
    init_trains = "all"  # the student alone: there are no adapters

    def __init__(self, cfg: Config, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        s_taps, t_taps = self.resolve_stage_taps(
            cfg.student_taps or self._default_taps(self.s_shapes), cfg.teacher_taps or self._default_taps(self.t_shapes)
        )
        if len(s_taps) < 2:
            raise self.pair_error("FSP compares consecutive maps and needs at least two per model", s_taps, t_taps)
        for s_tap, t_tap in zip(s_taps, t_taps):
            s_shape, t_shape = self.s_shapes[s_tap], self.t_shapes[t_tap]
            if len(s_shape) != 3 or len(t_shape) != 3:
                raise self.pair_error("FSP needs spatial maps [C, H, W]", s_taps, t_taps)
            if s_shape[0] != t_shape[0]:
                raise self.pair_error(
                    f"FSP needs equal channel counts of student and teacher at every map, but the student's "
                    f"{s_tap!r} has {s_shape[0]} and the teacher's {t_tap!r} {t_shape[0]}; pick a pair of equal "
                    "widths (e.g. resnet32x4 -> resnet8x4, wrn_40_2 -> wrn_16_2) or set method.student_taps / "
                    "method.teacher_taps",
                    s_taps,
                    t_taps,
                )
        self.student_tap_names, self.teacher_tap_names = s_taps, t_taps

    @staticmethod
    def _default_taps(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
        """``stem`` (where provided) then ``stage1`` .. ``stageN``."""
        return (["stem"] if "stem" in shapes else []) + stage_taps(shapes)

    def loss(self, io: StepIO) -> LossOut:
        """Init stage: ``{"fsp": ...}``; main stage: ``{"ce": ...}``."""
        if io.progress.stage != INIT_STAGE:
            return LossOut({"ce": self.ce(io)})
        s_feats = [io.s.taps[t] for t in self.student_tap_names]
        t_feats = [io.t.taps[t] for t in self.teacher_tap_names]
        return LossOut({"fsp": self.cfg.fsp_weight * losses.fsp(s_feats, t_feats)})
