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


__all__ = ["check_label_smoothing", "check_strategy"]
