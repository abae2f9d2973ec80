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

Deviations: none. Note that ``intra`` depends on the batch composition, so under DDP it is computed on each
process's part of the batch, as in the reference; ``gather_logits: true`` computes the DIST term over the global
batch instead (all processes' logits gathered, gradients returned to each process's rows), which equals the
one-process loss at the same global batch.
"""

from __future__ import annotations

from kdlab import distributed, losses
from kdlab.method_configs.dist import DISTConfig
from kdlab.methods import register_method
from kdlab.methods._dense import aux_needs, is_dense, logit_rows, with_aux
from kdlab.methods.base import DistillMethod
from kdlab.types import LossOut, Needs, StepIO


@register_method("dist", description="DIST: CE + Pearson-correlation relations (inter- and intra-class)")
class DIST(DistillMethod):
    """Distillation from a stronger teacher by matching Pearson correlations of the predictions."""

    mixed_labels = "soft"

    averages_teachers = True
    dense_outputs = True

    Config = DISTConfig

    def needs(self) -> Needs:
        return aux_needs(Needs(), self.cfg.aux_weight)

    def loss(self, io: StepIO) -> LossOut:
        return with_aux(self._loss, io, self.cfg.aux_weight)

    def _loss(self, io: StepIO) -> LossOut:
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
