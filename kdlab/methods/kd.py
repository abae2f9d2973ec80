"""``kd``: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS-W 2014, arXiv 1503.02531.

Objective: ``ce_weight * CE(z_s, y) + kd_weight * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`` (batch mean).

Reference: megvii-research/mdistiller@a08d46f ``mdistiller/distillers/KD.py`` (``kd_loss``) and
HobbitLong/RepDistiller ``distiller_zoo/KD.py`` (``DistillKL``), identical values.
CIFAR defaults T=4, CE 0.1, KD 0.9. ``standardize: true`` is logit standardisation (Sun et al., CVPR 2024;
recipe T=2, kd_weight 9). Several teachers: the KD term is averaged over teachers.

Dense outputs (segmentation): the KD term over one row per labelled pixel at the logits' resolution (the reference's
pixel-wise ``CriterionKD`` of hunto/DIST_KD ``segmentation/losses/loss.py``: KL ``batchmean`` over pixels times
``T^2``), plus ``aux_weight`` times every term on the auxiliary heads (:mod:`kdlab.methods._dense`).

Deviations: none (dense: pixels labelled 255 are left out of the KD term; the reference keeps them).
"""

from __future__ import annotations

from kdlab import losses
from kdlab.method_configs.kd import KDConfig
from kdlab.methods import register_method
from kdlab.methods._dense import aux_needs, logit_rows, with_aux
from kdlab.methods.base import DistillMethod
from kdlab.types import LossOut, Needs, StepIO


@register_method("kd", description="Hinton KD: CE + T^2 KL(teacher || student) on softened logits")
class KD(DistillMethod):
    """Vanilla knowledge distillation."""

    mixed_labels = "soft"

    averages_teachers = True
    dense_outputs = True

    Config = KDConfig

    def needs(self) -> Needs:
        return aux_needs(Needs(), self.cfg.aux_weight)

    def loss(self, io: StepIO) -> LossOut:
        return with_aux(self._loss, io, self.cfg.aux_weight)

    def _loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        s = io.s.logits
        # All teachers (or TeKAP's synthetic views) in one batched call: [M, B, K] -> [M] -> mean (dense: pixel rows).
        s_rows, t_rows = logit_rows(io, s, io.teacher_logits())
        kd_term = losses.kd(s_rows, t_rows, cfg.temperature, standardize=cfg.standardize).mean()
        return LossOut(
            {
                "ce": cfg.ce_weight * io.cross_entropy(s, cfg.label_smoothing),
                "kd": cfg.kd_weight * kd_term,
            }
        )
