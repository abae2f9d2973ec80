"""``dkd``: Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022, arXiv 2203.08679.

Objective: ``ce_weight * CE(z_s, y) + w(e) * (alpha * TCKD + beta * NCKD)`` with, at temperature T,
``TCKD = T^2 KL(b_t || b_s)`` on the binary target / non-target split ``b = [p_y, 1 - p_y]`` and
``NCKD = T^2 KL(p~_t || p~_s)`` on the distribution among the non-target classes (:func:`kdlab.losses.dkd`);
``w(e) = min((e + 1) / E, 1)`` for the 0-based epoch index ``e``, constant within an epoch, with the warm-up length
``E = warmup_epochs`` when set, else 1/12 of the run (the reference's 20 of 240 epochs; :mod:`kdlab.schedule`).

Reference: megvii-research/mdistiller@a08d46f ``mdistiller/distillers/DKD.py`` (``dkd_loss`` and the
``min(epoch / WARMUP, 1)`` factor with its 1-based epoch) and ``mdistiller/engine/cfg.py`` (defaults CE 1,
alpha 1, beta 8, T 4, warm-up 20). Per-pair CIFAR-100 beta overrides (2.0 for res56/res20 and res110/res32, 6.0
for vgg13/vgg8, vgg13/MV2, wrn40_2/wrn16_2, wrn40_2/wrn40_1) live in the recipes. ``standardize: true`` is logit
standardisation (sunshangquan/logit-standardization-KD ``DKD.py``; recipe T=2 with alpha and beta multiplied by
the KD weight 9, i.e. ``alpha=9, beta=72``). Several teachers: the DKD term is averaged over teachers.

Deviations:
- The warm-up reads kdlab's 0-based epoch index, so ``(e + 1) / warmup_epochs`` reproduces the reference's
  ``epoch / WARMUP`` with its 1-based epoch (index 0 -> 0.05, index 19 -> 1.0 for 20 epochs).
- ``warmup_epochs: 0`` disables the warm-up (factor 1), where the reference would divide by zero.
- The default warm-up is a fraction of the run (:mod:`kdlab.schedule`'s rule: 20 / 240 of ``train.epochs``), not a
  fixed 20 epochs: a 240-epoch run gets the reference's 20, a 20-epoch run 1.67 (factor 0.6, then 1), where a fixed
  20 epochs would keep the DKD term below full weight for the whole run.

Choosing ``beta`` for a new pair: the registered 8 is the authors' value for their wide pair (resnet32x4 ->
resnet8x4); their thin-ResNet pairs (resnet56 -> resnet20, resnet110 -> resnet32) use 2 and ImageNet 0.5 (r34 ->
r18) or 2 (r50 -> MobileNet). ``beta * T^2`` = 128 at the defaults, so NCKD outweighs the cross-entropy by an order
of magnitude; on a thin pair with a weak teacher the student then underfits the labels. The real-data benchmark
(``benchmarks/results/real_cifar10.md``: resnet20 -> resnet8 on 2,000 CIFAR-10 images, 20 epochs) measures it:
``dkd`` at the defaults against the control ``dkd[beta=2]``, both paired with the student alone.
"""

from __future__ import annotations

from kdlab import losses
from kdlab.method_configs.dkd import DKDConfig
from kdlab.methods import register_method
from kdlab.methods.base import DistillMethod
from kdlab.schedule import reference_fraction, scaled_epochs, warmup_factor
from kdlab.types import LossOut, Progress, StepIO

#: DKD's default warm-up as a share of the run: the reference's 20 of 240 epochs.
WARMUP_FRACTION = reference_fraction(20)


def dkd_warmup_factor(progress: Progress, warmup_epochs: float | None) -> float:
    """DKD's loss ramp at ``progress``: ``min((epoch + 1) / E, 1)`` with ``E = warmup_epochs``, or 1/12 of the run
    when it is None (:mod:`kdlab.schedule`)."""
    return warmup_factor(progress.epoch, scaled_epochs(warmup_epochs, WARMUP_FRACTION, progress.total_epochs))


@register_method("dkd", description="Decoupled KD: CE + warm-up * (alpha TCKD + beta NCKD)")
class DKD(DistillMethod):
    """Decoupled knowledge distillation (target-class and non-target-class terms weighted separately)."""

    #: Mixup/CutMix: the target/non-target split (TCKD, NCKD) uses the dominant label of each mixed image.
    mixed_labels = "dominant"

    averages_teachers = True

    Config = DKDConfig

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        s = io.s.logits
        per_teacher = losses.dkd(
            s, io.teacher_logits(), io.y, cfg.alpha, cfg.beta, cfg.temperature, standardize=cfg.standardize
        )
        factor = dkd_warmup_factor(io.progress, cfg.warmup_epochs)
        return LossOut(
            {
                "ce": cfg.ce_weight * io.cross_entropy(s, cfg.label_smoothing),
                "dkd": factor * per_teacher.mean(),
            },
            metrics={"dkd_warmup": s.new_tensor(factor)},
        )
