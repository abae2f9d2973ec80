"""``kd``: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS-W 2014, arXiv 1503.02531.

Objective: ``ce_weight * CE(z_s, y) + kd_weight * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`` (batch mean).

Reference: megvii-research/mdistiller@a08d46f ``mdistiller/distillers/KD.py`` (``kd_loss``) and
HobbitLong/RepDistiller ``distiller_zoo/KD.py`` (``DistillKL``), identical values.
CIFAR defaults T=4, CE 0.1, KD 0.9. ``standardize: true`` is logit standardisation (Sun et al., CVPR 2024;
recipe T=2, kd_weight 9). Several teachers: the KD term is averaged over teachers.

Deviations: none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlab import losses
from kdlab.config import MethodConfig
from kdlab.methods import register_method
from kdlab.methods.base import DistillMethod
from kdlab.ranges import rng
from kdlab.types import LossOut, StepIO


@register_method("kd", description="Hinton KD: CE + T^2 KL(teacher || student) on softened logits")
class KD(DistillMethod):
    """Vanilla knowledge distillation."""

    mixed_labels = "soft"

    averages_teachers = True

    @dataclass(kw_only=True)
    class Config(MethodConfig):
        name: str = "kd"
        temperature: float = field(default=4.0, metadata=rng(gt=0))
        """Softmax temperature T."""
        ce_weight: float = field(default=0.1, metadata=rng(ge=0))
        """Weight of the cross-entropy term."""
        kd_weight: float = field(default=0.9, metadata=rng(ge=0))
        """Weight of the KD term."""
        standardize: bool = False
        """Logit standardisation of both logit sets before the temperature."""
        label_smoothing: float = field(default=0.0, metadata=rng(ge=0, lt=1))
        """Label smoothing epsilon of the cross-entropy term."""

    def loss(self, io: StepIO) -> LossOut:
        cfg = self.cfg
        s = io.s.logits
        # All teachers (or TeKAP's synthetic views) in one batched call: [M, B, K] -> [M] -> mean.
        kd_term = losses.kd(s, io.teacher_logits(), cfg.temperature, standardize=cfg.standardize).mean()
        return LossOut(
            {
                "ce": cfg.ce_weight * io.cross_entropy(s, cfg.label_smoothing),
                "kd": cfg.kd_weight * kd_term,
            }
        )
