"""``kd``: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS-W 2014, arXiv 1503.02531.

Objective: ``ce_weight * CE(z_s, y) + kd_weight * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`` (batch mean).

Reference: megvii-research/mdistiller@a08d46f ``mdistiller/distillers/KD.py`` (``kd_loss``) and
HobbitLong/RepDistiller ``distiller_zoo/KD.py`` (``DistillKL``), identical values.
CIFAR defaults T=4, CE 0.1, KD 0.9. ``standardize: true`` is logit standardisation (Sun et al., CVPR 2024;
recipe T=2, kd_weight 9). Several teachers: the KD term is averaged over teachers.

Dense outputs (segmentation): the KD term over one row per labelled pixel at the logits' resolution (the reference's
pixel-wise ``CriterionKD`` of hunto/DIST_KD ``segmentation/losses/loss.py``: KL ``batchmean`` over pixels times
``T^2``), plus ``aux_weight`` times every term on the auxiliary heads (:mod:`kdlab.methods._dense`).

Detection outputs (issue 20): the KD term on the classification outputs of a detector (rows from
:class:`kdlab.methods._detection.DetectionPair`). RetinaNet's per-anchor scores are independent sigmoids, so each
anchor-class score is a two-outcome distribution and the term is ``T^2 * mean_anchors sum_classes KL(Bern(p_t) ||
Bern(p_s))`` (:func:`kdlab.losses.detection.sigmoid_kd`, the soft binary cross-entropy of sigmoid-head distillation
minus the teacher's entropy); Faster R-CNN's RoI head is a softmax over ``K + 1`` classes, so the term is Hinton's KD
per RoI, batch-mean over the student's sampled RoIs, with the teacher's RoI head on the student's proposals (Chen,
Choi, Yu, Han, Chandraker, "Learning Efficient Object Detection Models with Knowledge Distillation", NeurIPS 2017,
distil the RoI classifier's softened outputs). The task term is the detector's own losses (``io.task_loss``, as
``ce``). ``standardize``, ``label_smoothing`` and ``aux_weight`` are refused on a detection pair. No reference
recipe gives kd's weights for these pairs: ``configs/coco/kd/`` uses ``T = 1``, ``ce_weight 1``, ``kd_weight 1``.

Deviations: none (dense: pixels labelled 255 are left out of the KD term; the reference keeps them).
"""

from __future__ import annotations

from kdlab import losses
from kdlab.losses.detection import sigmoid_kd
from kdlab.method_configs.kd import KDConfig
from kdlab.methods import register_method
from kdlab.methods._any_task import AnyTaskLogitMethod
from kdlab.methods._dense import logit_rows
from kdlab.methods._detection import ONE_STAGE
from kdlab.types import LossOut, StepIO


@register_method("kd", description="Hinton KD: CE + T^2 KL(teacher || student) on softened logits")
class KD(AnyTaskLogitMethod):
    """Vanilla knowledge distillation."""

    Config = KDConfig

    def detection_refusals(self) -> dict[str, bool]:
        return {"standardize": self.cfg.standardize, **super().detection_refusals()}

    def detection_loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        s_rows, t_rows = self.detection.anchor_scores(io)  # [R, C], [M, R, C]
        if self.detection.kind == ONE_STAGE:
            kd_term = sigmoid_kd(s_rows, t_rows, cfg.temperature).mean()
        else:
            kd_term = losses.kd(s_rows, t_rows, cfg.temperature).mean()
        return LossOut({"ce": cfg.ce_weight * io.task_loss(io.s.logits), "kd": cfg.kd_weight * kd_term})

    def logit_loss(self, io: StepIO) -> LossOut:
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
