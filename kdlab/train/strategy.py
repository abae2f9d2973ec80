"""Build-time checks of the run-level training strategy (``train.label_smoothing``, ``train.ema_*``).

A strategy setting applies to every method, so a conflict with a method's own setting is refused when the run is
built, with the fix in the message, never resolved silently mid-run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from kdlab.config import ConfigError, RunConfig


def _label_smoothing_fields(obj: Any, path: str) -> Iterator[tuple[str, float]]:
    """Every ``label_smoothing`` field of a method config and of the configs it nests (wrappers' inner methods)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name == "label_smoothing" and isinstance(value, float):
                yield f"{path}.{f.name}", value
            else:
                yield from _label_smoothing_fields(value, f"{path}.{f.name}")
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _label_smoothing_fields(item, f"{path}.{i}")


def check_label_smoothing(cfg: RunConfig) -> None:
    """Refuse ``train.label_smoothing`` beside a different non-zero ``label_smoothing`` of the method (or of a method
    it wraps): :meth:`kdlab.types.StepIO.cross_entropy` would use the method's, so one of them must go."""
    run = cfg.train.label_smoothing
    if run <= 0:
        return
    for key, value in _label_smoothing_fields(cfg.method, "method"):
        if value > 0 and value != run:
            raise ConfigError(
                f"train.label_smoothing={run} and {key}={value} disagree; set one of them (the run-level "
                f"train.label_smoothing applies to every method's cross-entropy term), or make them equal"
            )


def check_strategy(cfg: RunConfig) -> None:
    """Every build-time check of the strategy settings (a :class:`ConfigError` naming the key and the fix)."""
    check_label_smoothing(cfg)
    tc = cfg.train
    if tc.ema_decay is None and tc.ema_export:
        raise ConfigError("train.ema_export=true needs an EMA: set train.ema_decay (e.g. 0.9999), or drop ema_export")
    if tc.ema_decay is None and tc.ema_warmup != "off":
        raise ConfigError(f"train.ema_warmup={tc.ema_warmup!r} needs an EMA: set train.ema_decay (e.g. 0.9999)")
    if cfg.optim.warmup_steps > 0 and cfg.optim.warmup_epochs > 0:
        raise ConfigError(
            f"optim.warmup_steps={cfg.optim.warmup_steps} and optim.warmup_epochs={cfg.optim.warmup_epochs:g} both set "
            "a warm-up length; set one of them (the other to 0)"
        )


def describe_strategy(cfg: RunConfig) -> str:
    """One line of the run header: optimiser, learning-rate schedule, weight decay, label smoothing, EMA, the student's
    dropout and drop-path when set above 0, and gradient clipping, e.g.
    ``rmsprop_tf lr 0.048 (alpha 0.9, eps 0.001, momentum 0.9); exp_step x0.97 every 2.4 epochs per step after a
    3-epoch warm-up from 1e-06; wd 1e-05 (not on biases/norms); label smoothing 0.1; EMA 0.9999 (exported)``."""
    from kdlab.train.optim import DEFAULT_EPS
    from kdlab.train.schedule import schedule_updates

    o, t = cfg.optim, cfg.train
    eps = o.eps if o.eps is not None else DEFAULT_EPS.get(o.name)
    if o.name == "sgd":
        opt = f"momentum {o.momentum:g}" + (", nesterov" if o.nesterov else "")
    elif o.name == "adamw":
        opt = f"betas {tuple(o.betas)}, eps {eps:g}"
    else:
        opt = f"alpha {o.alpha:g}, eps {eps:g}, momentum {o.momentum:g}"
    if o.schedule == "step":
        sched = f"step x{o.gamma:g} at epochs {', '.join(map(str, o.milestones))}"
    elif o.schedule == "exp_step":
        sched = f"exp_step x{o.gamma:g} every {o.decay_epochs:g} epochs"
    elif o.schedule == "cosine":
        sched = f"cosine to {o.min_lr:g}"
    elif o.schedule == "poly":
        sched = f"poly (power {o.power:g}) to {o.min_lr:g}"
    else:
        sched = "constant"
    sched += f" per {schedule_updates(o)}"
    if o.warmup_epochs > 0 or o.warmup_steps > 0:
        when = "after" if o.schedule_after_warmup else "under"
        length = f"{o.warmup_steps}-step" if o.warmup_steps > 0 else f"{o.warmup_epochs:g}-epoch"
        sched += f" {when} a {length} warm-up from {o.warmup_lr:g}"
    wd = f"wd {o.weight_decay:g}" + ("" if o.decay_norm_and_bias or o.weight_decay == 0 else " (not on biases/norms)")
    parts = [f"{o.name} lr {o.lr:g} ({opt})", sched, wd]
    if t.label_smoothing > 0:
        parts.append(f"label smoothing {t.label_smoothing:g}")
    if t.ema_decay is not None:
        warm = "" if t.ema_warmup == "off" else f", {t.ema_warmup} warm-up"
        parts.append(f"EMA {t.ema_decay:g}{warm}" + (" (exported)" if t.ema_export else " (evaluated, not exported)"))
    m = cfg.model
    if m.student_dropout:
        parts.append(f"student dropout {m.student_dropout:g}")
    if m.student_drop_path:
        parts.append(f"student drop-path {m.student_drop_path:g}")
    if t.clip_grad_norm is not None:
        parts.append(f"gradients clipped to norm {t.clip_grad_norm:g}")
    return "; ".join(parts)


__all__ = ["check_label_smoothing", "check_strategy", "describe_strategy"]
