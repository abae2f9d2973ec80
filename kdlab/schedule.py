"""Schedule-bound method settings on schedules of any length: the one rule every method follows.

Many method defaults were set for the 240-epoch CIFAR-100 recipe of CRD and mdistiller (DKD's and ReviewKD's 20-epoch
warm-ups, the 30-epoch initialisation stages of AB, FT and FSP in RepDistiller). Copied as epochs into a 20-epoch run,
such a warm-up covers the whole run and the method never trains at full weight, and an initialisation stage is longer
than the run it prepares; copied into a 1,000-epoch run a warm-up is over almost at once. The rule:

- A schedule-bound default is a **fraction of the run**: the reference's epochs divided by the reference's schedule
  (:data:`REFERENCE_EPOCHS`, 240), e.g. DKD's warm-up is ``20 / 240 = 1/12`` of ``train.epochs``. A 240-epoch run
  therefore gets exactly the reference's setting.
- A value set explicitly in epochs (e.g. ``method.warmup_epochs: 1`` of the ImageNet recipes) is used as given.
- A stage (an initialisation stage run before the main one) runs whole epochs: the fraction of the run is rounded half
  up, to at least one epoch (AB's 30/240 of a 20-epoch run: 2.5 -> 3 epochs); ``init_epochs: 0`` skips the stage.
- Where the run's length is unknown (a method built outside a run), the reference's 240 epochs are assumed.

The ramp itself keeps the reference's per-epoch granularity: ``min((e + 1) / E, 1)`` for the 0-based epoch ``e``
and the warm-up length ``E`` in epochs (which may be fractional under the rule, e.g. 1.67 epochs of a 20-epoch run).
"""

from __future__ import annotations

import math

#: Length in epochs of the schedule the CIFAR method defaults were set for (CRD / mdistiller CIFAR-100 recipe).
REFERENCE_EPOCHS = 240


def reference_fraction(reference_epochs: float) -> float:
    """The share of the run a setting of ``reference_epochs`` epochs of the 240-epoch reference schedule covers."""
    return reference_epochs / REFERENCE_EPOCHS


def scaled_epochs(epochs: float | None, fraction: float, total_epochs: int) -> float:
    """Length in epochs of a schedule-bound setting.

    Args:
        epochs: the value set explicitly in epochs, or None for the default.
        fraction: the default as a fraction of the run (e.g. ``reference_fraction(20)``).
        total_epochs: epochs of the run (``progress.total_epochs``).

    Returns:
        ``epochs`` when given, else ``fraction * total_epochs``.
    """
    if epochs is not None:
        return float(epochs)
    return fraction * total_epochs


def scaled_stage_epochs(epochs: int | None, fraction: float, total_epochs: int) -> int:
    """Whole epochs of a schedule-bound stage (e.g. AB's initialisation stage).

    Args:
        epochs: the value set explicitly in epochs, or None for the default.
        fraction: the default as a fraction of the run (e.g. ``reference_fraction(30)``).
        total_epochs: epochs of the main stage (``train.epochs``); 0 when unknown (then :data:`REFERENCE_EPOCHS`).

    Returns:
        ``epochs`` when given, else ``fraction * total_epochs`` rounded half up, at least 1.
    """
    if epochs is not None:
        return int(epochs)
    total = total_epochs if total_epochs > 0 else REFERENCE_EPOCHS
    return max(1, math.floor(fraction * total + 0.5))


def warmup_factor(epoch: int, warmup_epochs: float) -> float:
    """The linear loss ramp ``min((epoch + 1) / warmup_epochs, 1)`` for a 0-based ``epoch`` (1 when ``<= 0``)."""
    if warmup_epochs <= 0:
        return 1.0
    return min((epoch + 1) / warmup_epochs, 1.0)


__all__ = ["REFERENCE_EPOCHS", "reference_fraction", "scaled_epochs", "scaled_stage_epochs", "warmup_factor"]
