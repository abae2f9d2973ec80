"""Learning-rate schedules as pure functions of training progress (no scheduler state to checkpoint).

The schedules of the training strategies (DIST, Huang et al., NeurIPS 2022, Table 1):

- ``step``: ``lr * gamma ** (number of milestones passed)``, the CIFAR recipes (A1) and torchvision's 100-epoch
  ImageNet recipe (B1, x0.1 every 30 epochs).
- ``exp_step``: ``lr * gamma ** floor(t / decay_epochs)`` with a fractional period, TensorFlow's
  ``exponential_decay(..., staircase=True)`` over the global step as in the EfficientNet recipe (B2: x0.97 every 2.4
  epochs), the same rule as timm's ``StepLRScheduler(decay_t=2.4, decay_rate=0.97)``.
- ``cosine``: from ``lr`` to ``min_lr`` (B3).
- ``poly``: ``min_lr + (lr - min_lr) * (1 - s / S) ** power`` over the ``S`` optimiser steps of the stage (``s``
  0-based, per step), the DeepLab "poly" policy of the segmentation recipes (CIRKD / DIST_KD ``train_kd.py``:
  ``1e-4 + (0.02 - 1e-4) * (1 - iter / max_iter) ** 0.9``, i.e. ``min_lr: 1e-4``, ``power: 0.9``).
- ``constant``.

``t`` is the progress in epochs. ``optim.schedule_updates`` decides whether it moves every optimiser step (fractional
epochs, ``t = step / steps_per_epoch``) or at epoch starts (``t = epoch``); ``auto`` keeps each schedule's reference
granularity (``step``/``constant`` per epoch as RepDistiller, ``cosine``/``exp_step`` per step as TensorFlow and
timm's per-update schedulers). A linear warm-up from ``warmup_lr`` over ``warmup_epochs`` (always per step)
reaches the schedule's rate at its end; the schedule itself runs from step 0 under it (as timm's schedulers), or,
with ``optim.schedule_after_warmup``, starts when the warm-up ends (as DIST's reference ``GradualWarmupScheduler``,
whose decay counts from the end of the warm-up and whose cosine spans the rest of the run).

The detection 1x schedule (mmdetection's ``schedule_1x.py``, the DIST COCO runs): ``schedule: step``,
``milestones: [8, 11]``, ``gamma: 0.1`` over 12 epochs, and a linear warm-up over ``optim.warmup_steps: 500``
iterations from ``warmup_lr = 0.001 * lr`` (mmdetection's ``warmup_ratio``); its ramp is
``lr * (r + (1 - r) * s / 500)`` for step ``s``, kdlab's the same line one step later (``(s + 1) / W``).

Deviation from DIST's reference (hunto/image_classification_sota ``lib/utils/scheduler.py``): its warm-up rises once
per epoch (a staircase); kdlab's rises every step.
"""

from __future__ import annotations

import logging
import math

from kdlab.config import OptimConfig
from kdlab.types import Progress

log = logging.getLogger("kdlab")

#: The granularity ``optim.schedule_updates: auto`` gives each schedule.
AUTO_UPDATES = {"step": "epoch", "constant": "epoch", "cosine": "step", "exp_step": "step", "poly": "step"}


def schedule_updates(cfg: OptimConfig) -> str:
    """``"step"`` or ``"epoch"``: how often the schedule of ``cfg`` moves (``optim.schedule_updates`` resolved)."""
    return AUTO_UPDATES[cfg.schedule] if cfg.schedule_updates == "auto" else cfg.schedule_updates


def warmup_epochs(cfg: OptimConfig, steps_per_epoch: int) -> float:
    """The warm-up's length in epochs: ``optim.warmup_steps / steps_per_epoch`` when set, else ``warmup_epochs``."""
    if cfg.warmup_steps > 0:
        return cfg.warmup_steps / max(steps_per_epoch, 1)
    return cfg.warmup_epochs


def _offset_epochs(cfg: OptimConfig, steps_per_epoch: int) -> float:
    """Epochs the schedule's clock starts late by: the warm-up under ``optim.schedule_after_warmup``, else 0."""
    return warmup_epochs(cfg, steps_per_epoch) if cfg.schedule_after_warmup else 0.0


def schedule_epochs(cfg: OptimConfig, progress: Progress) -> float:
    """The progress ``t`` in epochs the schedule reads at ``progress``: fractional per step, whole per epoch, counted
    from the end of the warm-up under ``optim.schedule_after_warmup`` (0 during it)."""
    if schedule_updates(cfg) == "epoch":
        t = float(progress.epoch)
    else:
        t = progress.step / max(progress.steps_per_epoch, 1)
    offset = _offset_epochs(cfg, progress.steps_per_epoch)
    return max(t - offset, 0.0) if offset else t


def learning_rate(cfg: OptimConfig, progress: Progress) -> float:
    """The learning rate of the step at ``progress``.

    ``step``: ``lr * gamma ** (number of milestones m with t >= m)``: per epoch (the default) this is
    ``epoch_1based > m``, as the CIFAR KD references (RepDistiller ``adjust_learning_rate``). ``exp_step``:
    ``lr * gamma ** floor(t / decay_epochs)``. ``cosine``: ``min_lr + (lr - min_lr) (1 + cos(pi t / T)) / 2`` over
    the ``T`` epochs of the stage (less the warm-up under ``schedule_after_warmup``). During a warm-up of
    ``W = warmup_epochs * steps_per_epoch`` steps (or ``W = warmup_steps``), step ``s`` (0-based) runs at
    ``warmup_lr + (rate - warmup_lr) * (s + 1) / W``.
    """
    t = schedule_epochs(cfg, progress)
    if cfg.schedule == "step":
        lr = cfg.lr * cfg.gamma ** sum(t >= m for m in cfg.milestones)
    elif cfg.schedule == "exp_step":
        # a small tolerance so that t = k * decay_epochs computed in floating point (2.4 * 5 / 2.4) counts as k periods
        lr = cfg.lr * cfg.gamma ** math.floor(t / cfg.decay_epochs + 1e-9)
    elif cfg.schedule == "cosine":
        offset = _offset_epochs(cfg, progress.steps_per_epoch)
        if schedule_updates(cfg) == "epoch":
            frac = t / max(progress.total_epochs - offset, 1)
        elif offset:
            skip = offset * progress.steps_per_epoch
            frac = max(progress.step - skip, 0) / max(progress.total_steps - skip, 1)
        else:
            frac = progress.step / max(progress.total_steps, 1)
        lr = cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(frac, 1.0)))
    elif cfg.schedule == "poly":
        frac = t / max(progress.total_epochs - _offset_epochs(cfg, progress.steps_per_epoch), 1e-12)
        lr = cfg.min_lr + (cfg.lr - cfg.min_lr) * max(1.0 - frac, 0.0) ** cfg.power
    else:
        lr = cfg.lr
    if cfg.warmup_epochs > 0 or cfg.warmup_steps > 0:
        warm_steps = cfg.warmup_steps or cfg.warmup_epochs * progress.steps_per_epoch
        if progress.step + 1 < warm_steps:
            lr = cfg.warmup_lr + (lr - cfg.warmup_lr) * ((progress.step + 1) / warm_steps)
    return lr


def warn_if_warmup_outlasts_run(cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> str | None:
    """Log (and return) a warning when the warm-up is at least as long as the run: the learning rate then never
    reaches ``optim.lr`` (e.g. the COCO 1x recipe's 500-step warm-up in a 240-step smoke run stays below half of
    ``lr``); None when it fits."""
    total = steps_per_epoch * epochs
    warm = cfg.warmup_steps or cfg.warmup_epochs * steps_per_epoch
    if warm <= 0 or total <= 0 or warm < total:
        return None
    last = Progress(total - 1, epochs - 1, steps_per_epoch - 1, steps_per_epoch, epochs)
    peak = learning_rate(cfg, last)
    msg = (
        f"the warm-up ({warm:g} steps) is not shorter than the run ({total} steps of {epochs} epochs): the learning "
        f"rate ends at {peak:.3g}, below optim.lr={cfg.lr:g}; shorten optim.warmup_steps / optim.warmup_epochs for "
        "a short run"
    )
    log.warning(msg)
    return msg


__all__ = [
    "AUTO_UPDATES",
    "learning_rate",
    "schedule_epochs",
    "schedule_updates",
    "warmup_epochs",
    "warn_if_warmup_outlasts_run",
]
