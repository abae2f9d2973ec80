"""Learning-rate schedules as pure functions of training progress (no scheduler state to checkpoint)."""

from __future__ import annotations

import math

from kdlab.config import OptimConfig
from kdlab.types import Progress


def learning_rate(cfg: OptimConfig, progress: Progress) -> float:
    """The learning rate of the step at ``progress``.

    ``step``: ``lr * gamma ** (number of milestones m with epoch_1based > m)``, constant within an epoch, as the
    CIFAR KD references (RepDistiller ``adjust_learning_rate``). ``cosine``: per step from ``lr`` to ``min_lr``.
    A linear warm-up over ``warmup_epochs`` (per step) multiplies either.
    """
    if cfg.schedule == "step":
        epoch_1based = progress.epoch + 1
        lr = cfg.lr * cfg.gamma ** sum(epoch_1based > m for m in cfg.milestones)
    elif cfg.schedule == "cosine":
        t = min(progress.step / max(progress.total_steps, 1), 1.0)
        lr = cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))
    else:
        lr = cfg.lr
    if cfg.warmup_epochs > 0:
        warm_steps = cfg.warmup_epochs * progress.steps_per_epoch
        lr *= min((progress.step + 1) / warm_steps, 1.0)
    return lr
