"""``dist``: Huang, You, Wang, Qian, Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022,
arXiv 2205.10536.

Objective: ``ce_weight * CE(z_s, y) + dist_weight * tau^2 * (beta * inter + gamma * intra)`` with
``y = softmax(z / tau)``, ``inter = 1 - mean_i pearson(y_s[i, :], y_t[i, :])`` and
``intra = 1 - mean_j pearson(y_s[:, j], y_t[:, j])`` (:func:`kdlab.losses.dist`).

Reference: hunto/image_classification_sota@6f7a70a ``lib/models/losses/dist_kd.py`` (``DIST``) with the CIFAR
recipe ``configs/strategies/distill/dist_cifar.yaml`` (``kd: dist_t4``: tau 4, ``kd_loss_weight`` 2,
``ori_loss_weight`` 1) and the ImageNet recipes ``resnet_dist.yaml`` / ``dist_b2.yaml`` (``kd: dist``: tau 1,
same weights). The paper's "beta = gamma = 2" is the global weight 2 on beta = gamma = 1. Several teachers: the
DIST term is averaged over teachers.

Dense outputs (segmentation, hunto/DIST_KD ``segmentation/losses/dist_kd.py`` with ``train_kd.py``): the DIST term
over one row per labelled pixel at the logits' resolution (the reference's ``transpose(1, 3).reshape(-1, C)``:
inter-class relation per pixel over classes, intra-class relation per class over the batch's pixels), no
temperature (``tau: 1``; kdlab's ``tau^2`` factor is then 1), ``ce_weight`` 1, ``dist_weight`` 1, and
``aux_weight: 0.4`` for the same terms on the auxiliary heads (``configs/cityscapes/dist/``). Pixels labelled 255
are left out of the DIST term (the reference keeps them); ``gather_logits`` is for classification logits only.

Detection outputs (issue 20; hunto/MasKD ``mmrazor/mmrazor/models/losses/dist_kd.py`` ``DIST(beta, gamma,
use_sigmoid)`` with ``configs/distill/dist/dist_retinanet_x101-retinanet-r50_coco.py`` and
``dist_cascade_mask_rcnn_x101-fpn_x50_coco.py``): the DIST term on the classification outputs
(:func:`kdlab.losses.detection.detection_dist`). RetinaNet: sigmoid scores (``use_sigmoid=True``), one DIST per FPN
level over one row per position holding the ``a * K`` scores of its anchors (the reference distils the shared
``retina_cls`` map once per level and sums the levels' losses), so ``inter`` correlates a position's anchor-class
scores and ``intra`` each anchor-class column over the batch's positions. Faster R-CNN: softmax over the ``K + 1``
RoI classes, one row per sampled RoI of the student, the teacher's RoI head run on the student's proposals
(the reference's ``modules_with_student_inputs``). The task term is the detector's own losses
(``io.task_loss``, reported as ``ce``); the recipes (``configs/coco/dist/``) use the reference's ``beta = gamma = 1``,
weight 1, no temperature (``tau: 1``), ``ce_weight: 1``. ``gather_logits``, ``label_smoothing`` and ``aux_weight``
are refused on a detection pair. Numerics, as the reference: Pearson's gradient grows as one over the norm of the
centred student vector (the 1e-8 guards only the value), so near-constant rows or columns (positions whose head
features are all zero, a level of one position per image) give very large gradients. Measured on the tiny RetinaNet
pair at its first step (64 px, batch 4): the DIST term's gradient norm 44,968 against 0.58 for the detection losses,
the three coarsest levels having exactly constant rows; even under the 500-step warm-up from 0.001 x lr the
detection losses rose from 2.1 to 1,767 within 5 epochs, while with ``train.clip_grad_norm: 35`` only the first epoch
was clipped and the run trained, so the RetinaNet DIST recipes clip at 35 (kdlab's addition). Faster R-CNN's softmax
rows trained without clipping (first-epoch gradient norm 16). ``tau > 1`` flattens the sigmoid and makes it worse.

Deviations: none. Note that ``intra`` depends on the batch composition, so under DDP it is computed on each
process's part of the batch, as in the reference; ``gather_logits: true`` computes the DIST term over the global
batch instead (all processes' logits gathered, gradients returned to each process's rows), which equals the
one-process loss at the same global batch.
"""

from __future__ import annotations

from kdlab import distributed, losses
from kdlab.losses.detection import detection_dist
from kdlab.method_configs.dist import DISTConfig
from kdlab.methods import register_method
from kdlab.methods._any_task import AnyTaskLogitMethod
from kdlab.methods._dense import is_dense, logit_rows
from kdlab.methods._detection import ONE_STAGE
from kdlab.types import LossOut, StepIO


@register_method("dist", description="DIST: CE + Pearson-correlation relations (inter- and intra-class)")
class DIST(AnyTaskLogitMethod):
    """Distillation from a stronger teacher by matching Pearson correlations of the predictions."""

    Config = DISTConfig

    def detection_refusals(self) -> dict[str, bool]:
        return {"gather_logits": self.cfg.gather_logits, **super().detection_refusals()}

    def detection_loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        sigmoid = self.detection.kind == ONE_STAGE
        per_teacher = sum(
            detection_dist(s, t, cfg.beta, cfg.gamma, cfg.tau, use_sigmoid=sigmoid)
            for s, t in self.detection.class_rows(io)
        )  # [M]: summed over the FPN levels (one-stage) or the one RoI group (two-stage)
        return LossOut({"ce": cfg.ce_weight * io.task_loss(io.s.logits), "dist": cfg.dist_weight * per_teacher.mean()})

    def logit_loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        s = io.s.logits
        if is_dense(s) and cfg.gather_logits:
            raise ValueError("dist: gather_logits is for [B, K] classification logits; set it false for segmentation")
        s_all, t_all = logit_rows(io, s, io.teacher_logits())  # [B, K], [M, B, K] (dense: [P, K], [M, P, K])
        if cfg.gather_logits and distributed.active():
            s_all = distributed.all_gather_with_grad(s)
            t_all = distributed.gather_rows(t_all.transpose(0, 1))[0].transpose(0, 1)
        per_teacher = losses.dist(s_all, t_all, cfg.beta, cfg.gamma, cfg.tau)
        return LossOut(
            {
                "ce": cfg.ce_weight * io.cross_entropy(s, cfg.label_smoothing),
                "dist": cfg.dist_weight * per_teacher.mean(),
            }
        )
