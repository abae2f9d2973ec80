"""Exponential moving average (EMA) of the student's weights (``train.ema_decay``), as DIST's strategy B2 trains.

After every optimiser step of the main stage, each floating-point entry ``e`` of the averaged model's state (parameters
and buffers, e.g. BatchNorm's running statistics) moves towards the live model's ``w``::

    e <- d_n * e + (1 - d_n) * w        (n = updates done before this one, 0-based)

Integer buffers (``num_batches_tracked``) are copied. The decay ``d_n`` is ``ema_decay``, or with a warm-up
(``train.ema_warmup``):

- ``tf``: ``min(decay, (1 + n) / (10 + n))``, TensorFlow's ``ExponentialMovingAverage(num_updates=...)``.
- ``power``: ``min(decay, 1 - (1 + n) ** -power)``, timm's ``ModelEmaV3(use_warmup=True, warmup_gamma=1)``; the
  first update copies the weights (``d_0 = 0``).

The averaged model is the *deployable* model (``method.export(student)``: the student itself for most methods,
SimKD's student + projector + teacher classifier), so that its evaluation and export need nothing else. The EMA
starts as a copy of that model when the main stage starts (a method's own stages, e.g. FT's paraphraser, run before it
and are not averaged).

References: Polyak & Juditsky (1992); the TF EfficientNet recipe (Tan & Le, arXiv:1905.11946) that DIST's B2
(Huang et al., NeurIPS 2022, arXiv:2205.10536, Table 1: EMA 0.9999) follows; checked against timm's
``timm.utils.ModelEmaV3`` (``tests/test_strategies.py``). Deviations from timm: no separate EMA device or dtype, no
``update_after_step``; the state is kept in the model's own dtype (fp32 training keeps fp32 weights).

Under ``torchrun`` every rank updates its EMA from its own copy of the synchronised weights (identical after each
DDP step); BatchNorm buffers, which DDP leaves rank-local during a step, are made rank 0's before each evaluation
(:func:`kdlab.distributed.broadcast_buffers`), as the trainer does for the raw model, and rank 0 writes checkpoints
and the export.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from kdlab.config import ConfigError, TrainConfig
from kdlab.distributed import broadcast_buffers
from kdlab.methods.base import MAIN_STAGE
from kdlab.metrics import select_key
from kdlab.types import Progress


def ema_decay_at(decay: float, n: int, warmup: str = "off", power: float = 0.75) -> float:
    """The decay of update ``n`` (0-based count of earlier updates) under ``warmup`` (``off``, ``tf``, ``power``)."""
    if warmup == "off":
        return decay
    if warmup == "tf":
        return min(decay, (1 + n) / (10 + n))
    if warmup == "power":
        return min(decay, 1.0 - (1.0 + n) ** -power)
    raise ValueError(f"unknown EMA warm-up {warmup!r}; choose off, tf or power")


class ModelEMA(nn.Module):
    """The moving average of ``model``'s state.

    Args:
        model: the live model to average (the deployable student); it is deep-copied once, so later updates read the
            live model's current tensors.
        decay: ``d`` of ``e <- d e + (1 - d) w``, in (0, 1).
        warmup: ``off``, ``tf`` or ``power`` (see the module docstring).
        power: exponent of the ``power`` warm-up.

    Attributes:
        module: the averaged model (eval mode, no gradients); evaluate or export it like the live one.
        updates: number of updates applied (checkpointed with the weights).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: str = "off", power: float = 0.75) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        ema_decay_at(decay, 0, warmup, power)  # refuses an unknown warm-up now
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup, self.power = decay, warmup, power
        self.updates = 0

    def train(self, mode: bool = True) -> ModelEMA:
        """The averaged model stays in eval mode (its BatchNorm statistics are averaged, never recomputed)."""
        return super().train(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        return ema_decay_at(self.decay, self.updates, self.warmup, self.power)

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Move the average towards ``model`` (same structure as the averaged one); returns the decay used."""
        decay = self.current_decay()
        ema, live = self._pairs(model)
        floats = [(e, w) for e, w in zip(ema, live) if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [w.to(e.dtype) for e, w in floats], 1.0 - decay)
        for e, w in zip(ema, live):
            if not e.is_floating_point():
                e.copy_(w)
        self.updates += 1
        return decay

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Restart the average from ``model``'s current state (update count 0)."""
        for e, w in zip(*self._pairs(model)):
            e.copy_(w)
        self.updates = 0

    def _pairs(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        ema, live = self.module.state_dict(), model.state_dict()
        if ema.keys() != live.keys():
            missing = sorted(set(ema) ^ set(live))[:5]
            raise RuntimeError(f"EMA: the live model's state differs from the averaged model's (keys {missing})")
        return list(ema.values()), [live[k] for k in ema]

    def get_extra_state(self) -> dict:
        """The update count, saved in :meth:`state_dict` beside the averaged tensors."""
        return {"updates": self.updates}

    def set_extra_state(self, state: dict) -> None:
        """Restore the update count of :meth:`get_extra_state`."""
        self.updates = int(state["updates"])


def build_ema(cfg: TrainConfig, model: nn.Module) -> ModelEMA | None:
    """The run's EMA of ``model`` (``train.ema_decay``), or None when it is off; ``train.ema_export`` without a decay
    is a :class:`ConfigError` naming the fix."""
    if cfg.ema_decay is None:
        if cfg.ema_export:
            raise ConfigError(
                "train.ema_export=true needs an EMA: set train.ema_decay (e.g. 0.9999), or drop ema_export"
            )
        if cfg.ema_warmup != "off":
            raise ConfigError(f"train.ema_warmup={cfg.ema_warmup!r} needs an EMA: set train.ema_decay (e.g. 0.9999)")
        return None
    return ModelEMA(model, cfg.ema_decay, cfg.ema_warmup, cfg.ema_warmup_power)


class TrainerEMAMixin:
    """The :class:`~kdlab.train.trainer.Trainer`'s EMA of the student (``train.ema_decay``). Reads ``cfg``, ``run``
    and ``world``; :meth:`_setup_ema` sets ``ema`` (None when off) after the trainable step is built (and, under
    ``torchrun``, after DDP synchronised the ranks' initial weights)."""

    def _setup_ema(self) -> None:
        r = self.run
        self._ema_live = r.method.export(r.student)  # the deployable model; shares the student's tensors
        self.ema = build_ema(self.cfg.train, self._ema_live)

    def _ema_restart(self, progress: Progress) -> None:
        """At the first step of the main stage: the average starts from the weights the main stage starts from."""
        if self.ema is not None and progress.stage == MAIN_STAGE and progress.step == 0:
            self.ema.reset(self._ema_live)

    def _ema_update(self, progress: Progress) -> None:
        """After each optimiser step of the main stage."""
        if self.ema is not None and progress.stage == MAIN_STAGE:
            self.ema.update(self._ema_live)

    def _ema_metrics(self, raw: dict[str, float], evaluate_model: Callable[[nn.Module], dict[str, float]]) -> dict:
        """``raw`` with the EMA's metrics beside it (:func:`with_ema_metrics`); several processes: rank 0's BatchNorm
        statistics of the average are copied to every rank first (its parameters are equal on every rank)."""
        if self.ema is None:
            return raw
        broadcast_buffers(self.ema.module)
        return with_ema_metrics(raw, evaluate_model(self.ema.module))

    def _ema_export_model(self) -> nn.Module | None:
        """The averaged model when ``train.ema_export`` says it is the one exported, else None."""
        return self.ema.module if self.ema is not None and self.cfg.train.ema_export else None

    def _ema_summary(self, evals: list[dict]) -> dict:
        """The summary's ``ema`` entry: settings, update count, and the best evaluation of the average."""
        if self.ema is None:
            return {}
        tc = self.cfg.train
        by = select_key(tc.select_by.removeprefix("ema_"))  # over the average's own records
        scored = [(h["epoch"], ema_record(h["test"])) for h in evals if ema_record(h["test"])]
        best = max(scored, key=lambda e: by(e[1])) if scored else None
        return {
            "ema": {
                "decay": tc.ema_decay,
                "warmup": tc.ema_warmup,
                "updates": self.ema.updates,
                "exported": tc.ema_export,
                "best": {"epoch": best[0], **best[1]} if best else None,
            }
        }


def with_ema_metrics(raw: dict[str, float], ema: dict[str, float]) -> dict[str, float]:
    """One evaluation record: the raw weights' metrics as they are, the EMA's under ``ema_<name>`` (no ``ema_n``)."""
    return {**raw, **{f"ema_{k}": v for k, v in ema.items() if k != "n"}}


def ema_record(metrics: dict[str, float]) -> dict[str, float]:
    """The EMA's metrics of a record written by :func:`with_ema_metrics`, under their plain names."""
    return {k[len("ema_") :]: v for k, v in metrics.items() if k.startswith("ema_")}


def half_life_steps(decay: float) -> float:
    """Steps after which an update's weight in the average has halved: ``ln 0.5 / ln decay`` (0.9999: 6931 steps)."""
    return math.log(0.5) / math.log(decay)


__all__ = [
    "ModelEMA",
    "TrainerEMAMixin",
    "build_ema",
    "ema_decay_at",
    "ema_record",
    "half_life_steps",
    "with_ema_metrics",
]
