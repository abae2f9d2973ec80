"""Sample-wise knowledge fusion: per-sample ratios between the distillation and the label loss.

Plain functions over tensors (student first, teacher second). The fused loss of a batch is
``mean_i(kd_weight_i * L_i^KD + gt_weight_i * L_i^GT)``; convex policies use ``kd_weight_i = s * alpha_i`` and
``gt_weight_i = s * (1 - alpha_i)``. The ratio functions here are the policies of TGeo-KD (Hu et al., ICLR 2024,
arXiv 2312.15112) and of the baselines it compares with (ANL-KD, ADA-KD, WLS-KD); :mod:`kdlab.methods.fusion`
wraps them as methods.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FEATURE_SETS",
    "anneal_ratio",
    "class_mean_probs",
    "fused_loss",
    "teacher_margin_ratio",
    "trilateral_features",
    "weighted_soft_label_weight",
]

#: The feature sets of TGeo-KD's ablation, as lists of the vectors concatenated per sample (each ``[B, K]``):
#: ``e_sg = G - S``, ``e_tg = G - T``, ``e_st = T - S`` (edges), ``S``, ``T``, ``G`` (vertices) and the
#: inter-sample triangle's new parts ``e_bg = G - Tbar``, ``e_sb = Tbar - S``, ``Tbar``.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "edges": ("e_sg", "e_tg", "e_st"),
    "intra": ("e_sg", "e_tg", "e_st", "s", "t", "g"),
    "intra_inter": ("e_sg", "e_tg", "e_st", "s", "t", "g", "e_bg", "e_sb", "tbar"),
}


def fused_loss(kd: Tensor, gt: Tensor, kd_weight: Tensor | float, gt_weight: Tensor | float) -> Tensor:
    """``mean_i(kd_weight_i * kd_i + gt_weight_i * gt_i)``.

    Args:
        kd: ``[B]`` per-sample distillation loss.
        gt: ``[B]`` per-sample label loss.
        kd_weight: ``[B]`` (or a scalar) weight of the distillation loss.
        gt_weight: ``[B]`` (or a scalar) weight of the label loss.

    Returns:
        A scalar.
    """
    return (kd_weight * kd + gt_weight * gt).mean()


def anneal_ratio(fraction: float, start: float = 1.0, end: float = 0.0) -> float:
    """Teacher annealing (ANL-KD; Clark et al., "BAM!", ACL 2019): ``alpha = start + (end - start) * fraction``.

    Args:
        fraction: share of training done, in ``[0, 1]``.
        start: ratio at the start (1: the teacher only).
        end: ratio at the end (0: the labels only).
    """
    return start + (end - start) * fraction


def teacher_margin_ratio(t_logits: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
    """ADA-KD's ratio (Lukasik et al., "Teacher's pet", TMLR 2022, as TGeo-KD re-implements it):
    ``alpha_i = max(0, p_t(y_i) - mean_{j != y_i} p_t(j))`` with ``p_t = softmax(t_logits / temperature)``.

    Args:
        t_logits: ``[B, K]`` teacher logits (or ``[M, B, K]``; the probabilities are averaged over teachers).
        y: ``[B]`` labels.
        temperature: softmax temperature of ``p_t``.

    Returns:
        ``[B]`` ratios in ``[0, 1]``: high where the teacher is confidently right, 0 where it is wrong.
    """
    p = F.softmax(t_logits.detach().float() / temperature, dim=-1)
    if p.dim() == 3:
        p = p.mean(dim=0)
    k = p.shape[-1]
    p_y = p.gather(-1, y.view(-1, 1)).squeeze(-1)
    others = (1.0 - p_y) / (k - 1)
    return (p_y - others).clamp_min(0.0)


def weighted_soft_label_weight(s_logits: Tensor, t_logits: Tensor, y: Tensor, eps: float = 1e-7) -> Tensor:
    """WSL's per-sample weight of the distillation term (Zhou et al., "Rethinking soft labels for knowledge
    distillation: a bias-variance tradeoff perspective", ICLR 2021, arXiv 2102.00650):
    ``w_i = 1 - exp(-max(CE(s_i, y_i) / (CE(t_i, y_i) + eps), 0))`` on detached logits at temperature 1.

    A sample the student already fits better than the teacher (small ratio) gets little distillation. Matches
    open-mmlab/mmrazor ``models/losses/weighted_soft_label_distillation.py`` (``WSLD``).

    Args:
        s_logits: ``[B, K]`` student logits (detached here).
        t_logits: ``[B, K]`` teacher logits (or ``[M, B, K]``: the teachers' CE is averaged).
        y: ``[B]`` labels.
        eps: added to the teacher's cross-entropy.

    Returns:
        ``[B]`` weights in ``[0, 1)``.
    """
    ce_s = F.cross_entropy(s_logits.detach().float(), y, reduction="none")
    t = t_logits.detach().float()
    if t.dim() == 3:
        ce_t = torch.stack([F.cross_entropy(ti, y, reduction="none") for ti in t]).mean(dim=0)
    else:
        ce_t = F.cross_entropy(t, y, reduction="none")
    return 1.0 - torch.exp(-(ce_s / (ce_t + eps)).clamp_min(0.0))


def class_mean_probs(probs: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """``Tbar``: the mean prediction per class, ``Tbar[c] = mean_{i: y_i = c} probs_i``.

    Args:
        probs: ``[N, K]`` predicted probabilities (e.g. the teacher's on the training split).
        y: ``[N]`` labels.
        num_classes: ``K``.

    Returns:
        ``[K, K]``; the row of a class with no sample is uniform ``1 / K``.
    """
    sums = torch.zeros(num_classes, probs.shape[-1], dtype=probs.dtype, device=probs.device)
    sums.index_add_(0, y, probs)
    counts = torch.bincount(y, minlength=num_classes).to(probs.dtype).unsqueeze(-1)
    uniform = torch.full_like(sums, 1.0 / probs.shape[-1])
    return torch.where(counts > 0, sums / counts.clamp_min(1.0), uniform)


def trilateral_features(
    s_probs: Tensor, t_probs: Tensor, y: Tensor, t_class_mean: Tensor | None = None, feature_set: str = "intra_inter"
) -> Tensor:
    """TGeo-KD's per-sample geometry ``Delta_i`` of student prediction ``S``, teacher prediction ``T`` and one-hot
    label ``G`` (and the teacher's class-mean prediction ``Tbar`` for the inter-sample triangle).

    ``intra``: ``[G - S, G - T, T - S, S, T, G]``; ``intra_inter`` adds ``[G - Tbar, Tbar - S, Tbar]`` (the
    inter-sample triangle ``[G - S, G - Tbar, Tbar - S, S, Tbar, G]`` without the parts it shares with the intra
    triangle); ``edges``: ``[G - S, G - T, T - S]``. See :data:`FEATURE_SETS`.

    Args:
        s_probs: ``[B, K]`` student probabilities.
        t_probs: ``[B, K]`` teacher probabilities.
        y: ``[B]`` labels.
        t_class_mean: ``[K, K]`` ``Tbar`` (:func:`class_mean_probs`), needed by ``intra_inter``.
        feature_set: a key of :data:`FEATURE_SETS`.

    Returns:
        ``[B, n * K]`` with ``n`` the number of vectors of the set (3, 6 or 9).
    """
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; choose one of {sorted(FEATURE_SETS)}")
    g = F.one_hot(y, s_probs.shape[-1]).to(s_probs.dtype)
    parts = {"s": s_probs, "t": t_probs, "g": g, "e_sg": g - s_probs, "e_tg": g - t_probs, "e_st": t_probs - s_probs}
    if "tbar" in FEATURE_SETS[feature_set]:
        if t_class_mean is None:
            raise ValueError(f"feature set {feature_set!r} needs the teacher's class-mean prediction Tbar")
        tbar = t_class_mean[y].to(s_probs.dtype)
        parts.update({"tbar": tbar, "e_bg": g - tbar, "e_sb": tbar - s_probs})
    return torch.cat([parts[name] for name in FEATURE_SETS[feature_set]], dim=-1)
