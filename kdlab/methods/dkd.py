"""``dkd``: Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022, arXiv 2203.08679.

Objective: ``ce_weight * CE(z_s, y) + w(e) * (alpha * TCKD + beta * NCKD)`` with, at temperature T,
``TCKD = T^2 KL(b_t || b_s)`` on the binary target / non-target split ``b = [p_y, 1 - p_y]`` and
``NCKD = T^2 KL(p~_t || p~_s)`` on the distribution among the non-target classes (:func:`kdlab.losses.dkd`);
``w(e) = min((e + 1) / warmup_epochs, 1)`` for the 0-based epoch index ``e``, constant within an epoch.

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
"""

from __future__ import annotations

from dataclasses import dataclass

from kdlab import losses
from kdlab.config import MethodConfig
from kdlab.methods import register_method
from kdlab.methods.base import DistillMethod
from kdlab.types import LossOut, StepIO


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """DKD's loss ramp ``min((epoch + 1) / warmup_epochs, 1)`` for a 0-based ``epoch`` (1 when no warm-up)."""
    if warmup_epochs <= 0:
        return 1.0
    return min((epoch + 1) / warmup_epochs, 1.0)


@register_method("dkd", description="Decoupled KD: CE + warm-up * (alpha TCKD + beta NCKD)")
class DKD(DistillMethod):
    """Decoupled knowledge distillation (target-class and non-target-class terms weighted separately)."""

    averages_teachers = True

    @dataclass(kw_only=True)
    class Config(MethodConfig):
        name: str = "dkd"
        ce_weight: float = 1.0
        """Weight of the cross-entropy term."""
        alpha: float = 1.0
        """Weight of TCKD (target-class KD)."""
        beta: float = 8.0
        """Weight of NCKD (non-target-class KD); the recipes override it per pair."""
        temperature: float = 4.0
        """Softmax temperature T (1 on ImageNet)."""
        warmup_epochs: int = 20
        """The DKD term ramps linearly to full weight over this many epochs (1 on ImageNet, 0 for none)."""
        standardize: bool = False
        """Logit standardisation of both logit sets before the temperature."""
        label_smoothing: float = 0.0
        """Label smoothing epsilon of the cross-entropy term."""

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        s = io.s.logits
        per_teacher = losses.dkd(
            s, io.teacher_logits(), io.y, cfg.alpha, cfg.beta, cfg.temperature, standardize=cfg.standardize
        )
        factor = warmup_factor(io.progress.epoch, cfg.warmup_epochs)
        return LossOut(
            {
                "ce": cfg.ce_weight * losses.cross_entropy(s, io.y, cfg.label_smoothing),
                "dkd": factor * per_teacher.mean(),
            },
            metrics={"dkd_warmup": s.new_tensor(factor)},
        )
