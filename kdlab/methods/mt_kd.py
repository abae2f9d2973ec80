"""``mt_kd``: multi-teacher KD against the averaged teacher distribution (the "average the teachers" baseline of
multi-teacher distillation, e.g. You, Xu, Xu, Tao, "Learning from Multiple Teacher Networks", KDD 2017; Hinton et al.,
arXiv 1503.02531, distil an ensemble the same way).

Objective, for M teachers: ``ce_weight * CE(z_s, y) + kd_weight * T^2 * KL(mean_m softmax(z_m/T) || softmax(z_s/T))``
(:func:`kdlab.losses.logit.mean_teacher_kd`).

Reference: Rorozhl/CA-MKD@acc8c2b (the multi-teacher baselines of CA-MKD's tables) averages per-teacher *losses*
(``AVERAGE_LOSS``); that ensemble is kdlab's ``kd``, which with several teachers returns the mean over teachers of its
KD term. ``mt_kd`` averages the teachers' *probabilities* instead: one KL against the mean distribution.
With one teacher both are ``kd`` exactly (tested bit for bit).

Why a method of its own: ``kd`` declares ``averages_teachers`` (its value on M teachers is the mean of its values on
each), which lets TeKAP evaluate all synthetic views in one call; KD against a mean distribution is not such a mean,
so ``mt_kd`` does not declare it, and TeKAP over ``mt_kd`` evaluates view ``i`` of every real teacher together: the KL
against the mean of the M perturbed teachers' probabilities, summed over views with TeKAP's usual weights.

Deviations: none.
"""

from __future__ import annotations

from kdlab.losses.logit import mean_teacher_kd
from kdlab.method_configs.mt_kd import MeanTeacherKDConfig
from kdlab.methods import register_method
from kdlab.methods.base import DistillMethod
from kdlab.types import LossOut, StepIO


@register_method("mt_kd", description="Multi-teacher KD: CE + T^2 KL(mean of the teachers' softened probs || student)")
class MeanTeacherKD(DistillMethod):
    """KD against the mean of the teachers' softened probabilities (one teacher: ``kd``)."""

    mixed_labels = "soft"

    Config = MeanTeacherKDConfig

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        s = io.s.logits
        return LossOut(
            {
                "ce": cfg.ce_weight * io.cross_entropy(s),
                "kd": cfg.kd_weight * mean_teacher_kd(s, io.teacher_logits(), cfg.temperature),
            }
        )
