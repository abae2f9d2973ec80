"""Logit-level distillation losses (student first, teacher second).

Plain functions over tensors, like ``torch.nn.functional``. Each docstring gives the formula, the shapes and
the reference implementation it matches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cross_entropy", "kd", "reduce", "standardize_logits"]


def reduce(per_sample: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` (``"mean"``, ``"sum"`` or ``"none"``) to a ``[B]`` tensor."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample z-score of ``[B, K]`` logits: ``(z - mean(z)) / (eps + std(z))`` with the unbiased std.

    Reference: logit standardisation (Sun et al., CVPR 2024), sunshangquan/logit-standardization-KD
    ``mdistiller/distillers/KD.py::normalize``.
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (eps + std)


def kd(
    s_logits: Tensor,
    t_logits: Tensor,
    temperature: float = 4.0,
    standardize: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Hinton's KD loss: ``T^2 * KL(softmax(t/T) || softmax(s/T))`` summed over classes, batch-mean.

    Matches mdistiller ``KD.py::kd_loss`` and RepDistiller ``DistillKL`` (batchmean KL times T^2).

    Args:
        s_logits: ``[B, K]`` student logits.
        t_logits: ``[B, K]`` teacher logits (no gradient flows into them through this loss's use).
        temperature: softmax temperature ``T``.
        standardize: z-score both logit sets per sample first (logit standardisation).
        reduction: ``"mean"`` (the reference's scalar), ``"sum"`` or ``"none"`` (``[B]``).

    Returns:
        A scalar, or ``[B]`` with ``reduction="none"``.
    """
    if standardize:
        s_logits, t_logits = standardize_logits(s_logits), standardize_logits(t_logits)
    log_p_s = F.log_softmax(s_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(t_logits / temperature, dim=-1)
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1) * temperature**2
    return reduce(per_sample, reduction)


def cross_entropy(logits: Tensor, y: Tensor, label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    """Cross-entropy of ``[B, K]`` logits against ``[B]`` labels, with optional label smoothing
    ``q = (1 - eps) * onehot + eps / K`` (equal to MLKD's ``CrossEntropyLabelSmooth``)."""
    return F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction=reduction)


