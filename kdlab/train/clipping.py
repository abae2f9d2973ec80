"""Gradient clipping by global norm (``train.clip_grad_norm``), a training-strategy setting usable by every method.

Before every optimiser step the gradients of the parameters the optimiser updates (the student and the method's
adapters: every tensor of ``optimizer.param_groups``) are rescaled so that their global L2 norm is at most
``max_norm``: ``g <- g * min(1, max_norm / (||g||_2 + 1e-6))``, by ``torch.nn.utils.clip_grad_norm_`` itself.
The strategies that use it: the Swin Transformer recipe (Liu et al., ICCV 2021, arXiv:2103.14030) that DIST's
strategy B3 follows for Swin-T (max norm 5; DIST's reference hunto/image_classification_sota ``tools/train.py``,
``--clip-grad-norm --clip-grad-max-norm 5`` in ``configs/strategies/distill/diffkd/diffkd_b3.yaml``).

Mixed precision: under fp16 the loss scaler's gradients are unscaled first (``GradScaler.unscale_``), so the norm is
the true one and ``GradScaler.step`` does not unscale again; a step whose gradients overflowed is skipped by the
scaler as usual. Several processes: DDP has averaged the gradients during ``backward``, so every rank computes the
same norm and clips identically.

Logged per step (epoch means in ``metrics.jsonl``'s ``train``): ``grad_norm``, the global norm before clipping,
and ``grad_clipped``, 1 when it exceeded ``max_norm`` (its epoch mean: the fraction of steps clipped, each weighted
by its batch size).
A non-finite norm (only under fp16, a step the scaler skips) logs ``grad_nonfinite`` 1 instead of a norm.

Deviations from the reference: it clips the student's parameters only (``model.parameters()``); kdlab also clips
the method's adapters, which the optimiser updates with the student (DIST has none, so the two agree for DIST).
Parameters of auxiliary objectives (their own optimisers) are not clipped.
"""

from __future__ import annotations

import math

import torch


def optimizer_parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every parameter the optimiser updates, in its group order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def clip_gradients(
    optimizer: torch.optim.Optimizer, max_norm: float, scaler: torch.amp.GradScaler | None = None
) -> dict[str, float]:
    """Clip the global L2 norm of the gradients of ``optimizer``'s parameters to ``max_norm`` (in place).

    Args:
        optimizer: its parameters' ``.grad`` are clipped (parameters without a gradient are left out of the norm).
        max_norm: the largest global norm kept (> 0).
        scaler: the fp16 loss scaler, if any: the gradients are unscaled (``scaler.unscale_(optimizer)``) first.

    Returns:
        The step's logged values: ``{"grad_norm": norm before clipping, "grad_clipped": 1.0 or 0.0}``, or
        ``{"grad_nonfinite": 1.0}`` when the norm is not finite (an fp16 overflow; the scaler skips the step).
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = float(torch.nn.utils.clip_grad_norm_(optimizer_parameters(optimizer), max_norm))
    if not math.isfinite(norm):
        return {"grad_nonfinite": 1.0}
    return {"grad_norm": norm, "grad_clipped": float(norm > max_norm)}


__all__ = ["clip_gradients", "optimizer_parameters"]
