"""``mlkd``: Jin, Wang, Lin, "Multi-Level Logit Distillation", CVPR 2023 (pp. 24276-24285; no arXiv version).

Objective, over the temperatures ``T in {temperature, *extra_temperatures}`` (``{4, 3, 5, 2, 6}``), a weak view
``w`` (crop + flip) and a strong view ``s`` (plus RandAugment(2, 10)) of every image::

    ce_weight * (CE(z_s^w, y) + CE(z_s^s, y))
    + kd_weight * sum_T [ 1/B sum_i m_i KD_i(z^w, T) + 1/B sum_i KD_i(z^s, T) ]     (instance level)
    + kd_weight * sum_T 1/C sum_c n_c r_c(z^w, T)                                   (class level)
    + kd_weight * sum_T 1/B sum_i m_i q_i(z^w, T)                                   (batch level)

``KD_i`` is sample i's ``T^2 KL`` (:func:`kdlab.losses.kd`), ``r_c`` the row of class ``c`` of the squared
difference of the ``[C, C]`` class correlations (:func:`kdlab.losses.class_correlation`, ``reduction="none"``),
``q_i`` the row of sample ``i`` of the squared difference of the ``[B, B]`` batch similarities
(:func:`kdlab.losses.batch_correlation`). The confidence masks come from the teacher's weak-view prediction at
T = 1: ``m_i = [max_k p_t(k | x_i) <= median over the batch]`` per sample and ``n_c = [sum_i p_t(c | x_i) <=
median over classes]`` per class (median with linear interpolation, as ``np.percentile(., 50)``).

Reference: Jin-Ying/Multi-Level-Logit-Distillation@5ee473f ``mdistiller/distillers/KD_ours.py`` (defaults CE 0.1,
KD 0.9, T 4; the extra temperatures 3, 5, 2, 6 are hard-coded there), and the logit-standardisation fork
sunshangquan/logit-standardization-KD ``mdistiller/distillers/MLKD.py`` for ``standardize`` (applied to the
instance-level KD terms only, as there; the masks and the class/batch terms use the raw logits). Several
teachers (or TeKAP views): every term is averaged over teachers, each teacher with its own masks.

Deviations (each reproduced by ``reference_quirks: true``):
- The released code multiplies the masks with losses that are already batch-mean scalars, so
  ``(loss * mask).mean()`` scales the loss by the fraction of kept samples (0.5 for an even batch) instead of
  masking samples. kdlab masks per sample (per class for the class level) and divides by B (by C), so both
  forms have the same scale and agree when the mask keeps everything.
- In the released code the strong-view instance terms at the 4th and 5th temperatures (T = 2 and 6) use the
  weak-view logits. kdlab uses the strong-view logits at every temperature.
Kept as released: the strong view's class- and batch-level terms, computed but never returned by the released
code, are not part of the loss; the strong-view instance terms are not masked.

Scale: every level sums five temperatures (the instance level over two views), so at ``kd_weight`` 0.9 the
instance level alone weighs about ten ``kd`` terms against a cross-entropy of weight 0.1 per view. On a small
student with a weak teacher that pulls the student away from the labels; the real-data benchmark
(``benchmarks/results/real_cifar10.md``) measures the defaults against the control ``mlkd[T=4]``
(``extra_temperatures: []``), both paired with the student alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab import losses
from kdlab.config import MethodConfig
from kdlab.method_configs.mlkd import MLKDConfig
from kdlab.methods import register_method
from kdlab.methods.base import BuildContext, DistillMethod
from kdlab.types import DEFAULT_VIEW, LossOut, Needs, StepIO

STRONG_VIEW = "strong"


def confidence_masks(t_logits: Tensor) -> tuple[Tensor, Tensor]:
    """MLKD's masks from the teacher's weak-view logits ``[..., B, C]`` at T = 1.

    Returns:
        ``(sample_mask [..., B], class_mask [..., C])``, booleans: a sample is kept when the teacher's top
        probability is at most its median over the batch; a class when its summed probability over the batch is
        at most the median over classes (median by linear interpolation, numpy's default percentile).
    """
    p = F.softmax(t_logits.detach(), dim=-1)
    conf = p.amax(dim=-1)
    class_conf = p.sum(dim=-2)
    sample_mask = conf <= torch.quantile(conf, 0.5, dim=-1, keepdim=True)
    class_mask = class_conf <= torch.quantile(class_conf, 0.5, dim=-1, keepdim=True)
    return sample_mask, class_mask


def _masked_mean(values: Tensor, mask: Tensor, quirks: bool) -> Tensor:
    """``1/n sum_i mask_i values_i`` over the last dim, or with ``quirks`` ``mean(values) * mean(mask)``."""
    mask = mask.to(values.dtype)
    if quirks:
        return values.mean(dim=-1) * mask.mean(dim=-1)
    return (values * mask).mean(dim=-1)


@register_method("mlkd", description="Multi-level logit distillation: instance, batch and class levels, 2 views")
class MLKD(DistillMethod):
    """Multi-level logit distillation over five temperatures and a weak and a strong view."""

    mixed_labels = "soft"  # both views are mixed alike (same pairs, lambda and box)

    averages_teachers = True

    Config = MLKDConfig

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        self.temperatures = (float(cfg.temperature), *(float(t) for t in cfg.extra_temperatures))

    def needs(self) -> Needs:
        return Needs(views=(DEFAULT_VIEW, STRONG_VIEW))

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        quirks = cfg.reference_quirks
        s_weak, s_strong = io.student[DEFAULT_VIEW].logits, io.student[STRONG_VIEW].logits
        t_weak, t_strong = io.teacher_logits(DEFAULT_VIEW), io.teacher_logits(STRONG_VIEW)  # [M, B, C]
        # every temperature and teacher at once: [J, 1, 1, 1] against [M, B, C] -> [J, M, ...]
        temps = s_weak.new_tensor(self.temperatures).reshape(-1, 1, 1, 1)
        sample_mask, class_mask = confidence_masks(t_weak)  # [M, B], [M, C]

        kd_weak = losses.kd(s_weak, t_weak, temps, standardize=cfg.standardize, reduction="none")  # [J, M, B]
        kd_strong = losses.kd(s_strong, t_strong, temps, standardize=cfg.standardize, reduction="none")
        if quirks:
            kd_strong = torch.cat((kd_strong[:3], kd_weak[3:]), dim=0)
        instance = _masked_mean(kd_weak, sample_mask, quirks) + kd_strong.mean(dim=-1)  # [J, M]

        class_rows = losses.class_correlation(s_weak, t_weak, temps, reduction="none")  # [J, M, C]
        batch_rows = losses.batch_correlation(s_weak, t_weak, temps, reduction="none")  # [J, M, B]
        class_level = _masked_mean(class_rows, class_mask, quirks)
        batch_level = _masked_mean(batch_rows, sample_mask, quirks)

        ce = io.cross_entropy(s_weak, cfg.label_smoothing) + io.cross_entropy(s_strong, cfg.label_smoothing)
        w = cfg.kd_weight
        return LossOut(
            {
                "ce": cfg.ce_weight * ce,
                "instance": w * instance.sum(dim=0).mean(),
                "class": w * class_level.sum(dim=0).mean(),
                "batch": w * batch_level.sum(dim=0).mean(),
            }
        )
