"""Logit-level distillation losses (student first, teacher second).

Plain functions over tensors, like ``torch.nn.functional``. Each docstring gives the formula, the shapes and
the reference implementation it matches.

Leading dimensions: ``kd``, ``dkd``, ``class_correlation`` and ``batch_correlation`` accept logits shaped
``[..., B, K]``; student and teacher broadcast against each other, so one student ``[B, K]`` can be compared
with a stack of teachers or synthetic views ``[N, B, K]`` in one call (TeKAP, several teachers), and a
temperature tensor shaped ``[..., 1, 1]`` evaluates several temperatures at once (MLKD). Per-sample results are
then ``[..., B]`` and ``reduction`` reduces the last dimension only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "batch_correlation",
    "class_correlation",
    "confidence_weights",
    "cross_entropy",
    "dist",
    "dkd",
    "kd",
    "mean_teacher_kd",
    "reduce",
    "standardize_logits",
    "tekap_kd",
    "tekap_views",
]


def reduce(per_sample: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` (``"mean"``, ``"sum"`` or ``"none"``) over the last dimension.

    Args:
        per_sample: ``[B]`` (or ``[..., B]``) per-sample values.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        A scalar (``[...]`` with leading dims) or ``per_sample`` itself for ``"none"``.
    """
    if reduction == "mean":
        return per_sample.mean(dim=-1)
    if reduction == "sum":
        return per_sample.sum(dim=-1)
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample z-score of ``[..., K]`` logits: ``(z - mean(z)) / (eps + std(z))`` with the unbiased std.

    Reference: logit standardisation (Sun et al., CVPR 2024), sunshangquan/logit-standardization-KD
    ``mdistiller/distillers/KD.py::normalize``.
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (eps + std)


def _temperature(temperature: float | Tensor, like: Tensor) -> tuple[float | Tensor, float | Tensor]:
    """``(T for logits [..., B, K], T^2 for per-sample values [..., B])``; a tensor T is ``[..., 1, 1]``."""
    if isinstance(temperature, Tensor):
        if temperature.dim() < 2 or temperature.shape[-2:] != (1, 1):
            raise ValueError(f"a temperature tensor must be shaped [..., 1, 1], got {tuple(temperature.shape)}")
        t = temperature.to(dtype=like.dtype, device=like.device)
        return t, t.squeeze(-1) ** 2
    return temperature, temperature**2


def kd(
    s_logits: Tensor,
    t_logits: Tensor,
    temperature: float | Tensor = 4.0,
    standardize: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Hinton's KD loss: ``T^2 * KL(softmax(t/T) || softmax(s/T))`` summed over classes, batch-mean.

    Matches mdistiller ``KD.py::kd_loss`` and RepDistiller ``DistillKL`` (batchmean KL times T^2).

    Args:
        s_logits: ``[B, K]`` student logits (or ``[..., B, K]``, broadcast against the teacher).
        t_logits: ``[B, K]`` teacher logits, or ``[N, B, K]`` for N teachers/views at once.
        temperature: softmax temperature ``T``, or a ``[..., 1, 1]`` tensor of temperatures.
        standardize: z-score both logit sets per sample first (logit standardisation).
        reduction: ``"mean"`` (the reference's scalar), ``"sum"`` or ``"none"`` (``[B]``).

    Returns:
        A scalar, or ``[B]`` with ``reduction="none"`` (``[...]`` / ``[..., B]`` with leading dims).
    """
    if standardize:
        s_logits, t_logits = standardize_logits(s_logits), standardize_logits(t_logits)
    temp, temp2 = _temperature(temperature, s_logits)
    log_p_s = F.log_softmax(s_logits / temp, dim=-1)
    log_p_t = F.log_softmax(t_logits / temp, dim=-1)
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1) * temp2
    return reduce(per_sample, reduction)


def cross_entropy(logits: Tensor, y: Tensor, label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    """Cross-entropy of ``[B, K]`` logits against ``[B]`` labels, with optional label smoothing; ``y`` may also be
    ``[B, K]`` label distributions (Mixup/CutMix's ``Batch.y_soft``), smoothed the same way: ``(1 - eps) y + eps / K``.

    The target is ``q = (1 - eps) * onehot(y) + eps / K`` and the loss ``-sum_k q_k log softmax(z)_k`` per
    sample, equal to MLKD's and hunto's ``CrossEntropyLabelSmooth``. Returns a scalar, or ``[B]`` with
    ``reduction="none"``. Dense logits ``[B, K, h, w]`` with ``[B, H, W]`` labels are the segmentation form
    (:func:`kdlab.losses.dense.dense_cross_entropy`: upsampled, pixels labelled 255 ignored).
    """
    if logits.dim() == 4:
        from kdlab.losses.dense import dense_cross_entropy

        return dense_cross_entropy(logits, y, label_smoothing, reduction)
    return F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction=reduction)


def _kl_rows(p_t: Tensor, log_p_s: Tensor) -> Tensor:
    """``sum_k p_t log(p_t) - p_t log_p_s`` over the last dim (``F.kl_div``'s pointwise form, 0 log 0 = 0)."""
    return (torch.xlogy(p_t, p_t) - p_t * log_p_s).sum(dim=-1)


def dkd(
    s_logits: Tensor,
    t_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    standardize: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): ``alpha * TCKD + beta * NCKD``.

    With ``p = softmax(z / T)``:

    - TCKD: ``T^2 * KL(b_t || b_s)`` over the binary distribution ``b = [p_y, sum_{k != y} p_k]`` (the student's
      log taken as ``log(b_s)``);
    - NCKD: ``T^2 * KL(q_t || q_s)`` with ``q = softmax(z / T - 1000 * onehot(y))``, the distribution among
      the non-target classes.

    Per sample, ``KD = TCKD + (1 - p_t[y]) * NCKD`` (the paper's decomposition). Matches mdistiller
    ``DKD.py::dkd_loss`` (reduction "mean" is its ``sum / B``); ``standardize`` is the logit-standardisation
    fork's option (z-score before dividing by T). The warm-up factor belongs to the method.

    Args:
        s_logits: ``[B, K]`` student logits.
        t_logits: ``[B, K]`` teacher logits, or ``[N, B, K]`` for N teachers/views at once.
        target: ``[B]`` integer labels.
        alpha: weight of TCKD.
        beta: weight of NCKD.
        temperature: softmax temperature ``T``.
        standardize: z-score both logit sets per sample first.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[B]``, or ``[N, B]``).

    Returns:
        A scalar (``[N]`` for stacked teachers), or per-sample values with ``reduction="none"``.
    """
    if standardize:
        s_logits, t_logits = standardize_logits(s_logits), standardize_logits(t_logits)
    gt = F.one_hot(target.reshape(-1), s_logits.shape[-1]).to(s_logits.dtype)
    other = 1.0 - gt
    z_s, z_t = s_logits / temperature, t_logits / temperature
    p_s, p_t = F.softmax(z_s, dim=-1), F.softmax(z_t, dim=-1)
    b_s = torch.stack(((p_s * gt).sum(-1), (p_s * other).sum(-1)), dim=-1)
    b_t = torch.stack(((p_t * gt).sum(-1), (p_t * other).sum(-1)), dim=-1)
    tckd = _kl_rows(b_t, torch.log(b_s))
    q_t = F.softmax(z_t - 1000.0 * gt, dim=-1)
    log_q_s = F.log_softmax(z_s - 1000.0 * gt, dim=-1)
    nckd = _kl_rows(q_t, log_q_s)
    per_sample = (alpha * tckd + beta * nckd) * temperature**2
    return reduce(per_sample, reduction)


def _pearson(a: Tensor, b: Tensor, dim: int, eps: float = 1e-8) -> Tensor:
    """Pearson correlation along ``dim``: cosine of the centred vectors, ``eps`` added to the norm product."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return (a * b).sum(dim=dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


def dist(
    s_logits: Tensor,
    t_logits: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """DIST (Huang et al., NeurIPS 2022): ``tau^2 * (beta * inter + gamma * intra)``.

    With ``y = softmax(z / tau)`` over classes, ``inter = 1 - mean_i pearson(y_s[i, :], y_t[i, :])`` (each
    sample's class distribution) and ``intra = 1 - mean_j pearson(y_s[:, j], y_t[:, j])`` (each class's
    scores across the batch), pearson being the cosine of the centred vectors with 1e-8 added to the product
    of norms. Matches hunto/image_classification_sota ``lib/models/losses/dist_kd.py::DIST`` (the ``dist_t4``
    variant multiplies both terms by tau^2). Not per-sample: ``intra`` couples the batch.

    Args:
        s_logits: ``[B, C]``, or ``[B, C, *spatial]`` (dense prediction: every position is a sample, as DIST's
            segmentation code, which reshapes to ``[B*H*W, C]``).
        t_logits: the same shape as ``s_logits``, or with one extra leading dim ``[N, ...]`` for N teachers/views
            evaluated against the same student at once.
        beta: weight of the inter-class (per-sample) relation.
        gamma: weight of the intra-class (per-class) relation.
        tau: softmax temperature.
        reduction: ``"mean"`` (the reference's scalar), or ``"none"`` / ``"sum"`` over a per-sample form: sample
            ``i`` gets ``tau^2 * (beta * (1 - pearson(y_s[i, :], y_t[i, :])) + gamma * intra)``, its own inter-class
            term plus the batch's intra-class term (which couples the batch and has no per-sample split), so the
            mean over samples is the ``"mean"`` value and a per-sample weighting weights ``intra`` by the mean
            weight. Only for ``[B, C]`` logits.

    Returns:
        A scalar, or ``[N]`` with stacked teachers; ``[B]`` (``[N, B]``) with ``reduction="none"``.
    """
    extra = t_logits.dim() - s_logits.dim()
    if extra not in (0, 1) or t_logits.shape[extra:] != s_logits.shape:
        raise ValueError(
            f"dist: teacher logits {tuple(t_logits.shape)} must match the student's {tuple(s_logits.shape)}, "
            "optionally with one extra leading dim"
        )
    if s_logits.dim() > 2:
        c = s_logits.shape[1]
        s_logits = s_logits.movedim(1, -1).reshape(-1, c)
        t_logits = t_logits.movedim(1 + extra, -1).reshape(*t_logits.shape[:extra], -1, c)
    y_s = F.softmax(s_logits / tau, dim=-1)
    y_t = F.softmax(t_logits / tau, dim=-1)
    if reduction != "mean":
        if s_logits.dim() != 2:
            raise ValueError(f"dist: reduction={reduction!r} needs [B, C] logits, got {tuple(s_logits.shape)}")
        intra = 1.0 - _pearson(y_s, y_t, dim=-2).mean(dim=-1)
        per_sample = tau**2 * (beta * (1.0 - _pearson(y_s, y_t, dim=-1)) + gamma * intra.unsqueeze(-1))
        return reduce(per_sample, reduction)
    inter = 1.0 - _pearson(y_s, y_t, dim=-1).mean(dim=-1)
    intra = 1.0 - _pearson(y_s, y_t, dim=-2).mean(dim=-1)
    return tau**2 * (beta * inter + gamma * intra)


def _gram_rows(s_logits: Tensor, t_logits: Tensor, temperature: float | Tensor, over: str) -> Tensor:
    temp, _ = _temperature(temperature, s_logits)
    p_s = F.softmax(s_logits / temp, dim=-1)
    p_t = F.softmax(t_logits / temp, dim=-1)
    if over == "class":
        p_s, p_t = p_s.transpose(-1, -2), p_t.transpose(-1, -2)
    g_s = p_s @ p_s.transpose(-1, -2)
    g_t = p_t @ p_t.transpose(-1, -2)
    return ((g_t - g_s) ** 2).sum(dim=-1)


def class_correlation(
    s_logits: Tensor, t_logits: Tensor, temperature: float | Tensor, reduction: str = "mean"
) -> Tensor:
    """MLKD's class-level alignment: ``sum((P_t^T P_t - P_s^T P_s)^2) / C`` with ``P = softmax(z / T)``.

    ``P^T P`` is the ``[C, C]`` class-by-class correlation of the batch. Matches Jin-Ying/
    Multi-Level-Logit-Distillation ``KD_ours.py::cc_loss``.

    Args:
        s_logits: ``[B, C]`` student logits (or ``[..., B, C]``).
        t_logits: ``[B, C]`` teacher logits (or ``[..., B, C]``, broadcast against the student).
        temperature: ``T``, or a ``[..., 1, 1]`` tensor.
        reduction: ``"mean"`` (the reference's scalar, the mean over classes of the row sums), ``"sum"`` or
            ``"none"``: ``[C]`` row sums ``r_c = sum_k (G_t - G_s)_{ck}^2``, one value per class.
    """
    return reduce(_gram_rows(s_logits, t_logits, temperature, "class"), reduction)


def batch_correlation(
    s_logits: Tensor, t_logits: Tensor, temperature: float | Tensor, reduction: str = "mean"
) -> Tensor:
    """MLKD's batch-level alignment: ``sum((P_t P_t^T - P_s P_s^T)^2) / B`` with ``P = softmax(z / T)``.

    ``P P^T`` is the ``[B, B]`` sample-by-sample similarity of the batch. Matches Jin-Ying/
    Multi-Level-Logit-Distillation ``KD_ours.py::bc_loss``.

    Args:
        s_logits: ``[B, C]`` student logits (or ``[..., B, C]``).
        t_logits: ``[B, C]`` teacher logits (or ``[..., B, C]``, broadcast against the student).
        temperature: ``T``, or a ``[..., 1, 1]`` tensor.
        reduction: ``"mean"`` (the reference's scalar, the mean over samples of the row sums), ``"sum"`` or
            ``"none"``: ``[B]`` row sums ``r_i = sum_j (G_t - G_s)_{ij}^2``, one value per sample.
    """
    return reduce(_gram_rows(s_logits, t_logits, temperature, "batch"), reduction)


def tekap_views(t_logits: Tensor, noise: Tensor, noise_weight: float) -> Tensor:
    """TeKAP's perturbed teachers: ``view_i = (1 - noise_weight) * t + noise_weight * noise[i]``.

    Args:
        t_logits: ``[B, ...]`` teacher logits or features (detached here).
        noise: ``[N, B, ...]`` noise, one slice per view.
        noise_weight: the mixing weight (0.1 in the released code).

    Returns:
        ``[N, B, ...]`` views, computed as one batched tensor.
    """
    return (1.0 - noise_weight) * t_logits.detach() + noise_weight * noise


def tekap_kd(
    s_logits: Tensor,
    t_logits: Tensor,
    noise: Tensor | None = None,
    temperature: float = 4.0,
    noise_weight: float = 0.1,
    clean_weight: float = 1.0,
    view_weight: float = 0.8,
    num_views: int = 3,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> Tensor:
    """TeKAP's logit loss: ``clean_weight * kd(s, t) + view_weight * sum_i kd(s, view_i)``.

    ``view_i = (1 - noise_weight) * t + noise_weight * noise[i]`` (:func:`tekap_views`); all views and the clean
    teacher go through one batched :func:`kd` call. The defaults are the released code
    (mdimtiazh/TeKAP ``distiller_zoo/Ours_TeKAP_L.py``: 3 views of N(0, 1) noise, weights 1 and 0.8, the
    0.8 multiplying a sum); the paper's convex form is ``clean_weight=lambda, view_weight=1-lambda``.

    Args:
        s_logits: ``[B, C]`` student logits.
        t_logits: ``[B, C]`` teacher logits.
        noise: ``[N, B, C]`` noise; None draws ``num_views`` slices of N(0, 1) from ``generator``.
        temperature: KD temperature ``T``.
        noise_weight: mixing weight of the noise.
        clean_weight: weight of the clean teacher's KD term.
        view_weight: weight of the sum over views.
        num_views: N when ``noise`` is None.
        generator: source of the noise when ``noise`` is None (on the logits' device).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[B]``).

    Returns:
        A scalar, or ``[B]`` with ``reduction="none"``.
    """
    if noise is None:
        noise = torch.randn(
            (num_views, *t_logits.shape), generator=generator, device=t_logits.device, dtype=t_logits.dtype
        )
    views = tekap_views(t_logits, noise, noise_weight)
    teachers = torch.cat((t_logits.detach().unsqueeze(0), views), dim=0)
    per_view = kd(s_logits, teachers, temperature, reduction="none")
    per_sample = clean_weight * per_view[0] + view_weight * per_view[1:].sum(dim=0)
    return reduce(per_sample, reduction)


def mean_teacher_kd(s_logits: Tensor, t_logits: Tensor, temperature: float = 4.0, reduction: str = "mean") -> Tensor:
    """KD against the mean of several teachers' softened probabilities:
    ``T^2 * KL(mean_m softmax(t_m/T) || softmax(s/T))`` summed over classes.

    The averaged distribution is formed in log space, ``log mean_m p_m = logsumexp_m(log p_m) - log M``, so one
    teacher gives :func:`kd` bit for bit. Multi-teacher averaging baseline (e.g. You et al., KDD 2017; the
    ``AVERAGE`` ensembles of multi-teacher papers); contrast :func:`kd` on ``[M, B, K]`` teachers, which gives
    one KL per teacher (their mean is the "average of losses" ensemble).

    Args:
        s_logits: ``[B, K]`` student logits.
        t_logits: ``[M, B, K]`` logits of M teachers (``[B, K]`` is one teacher).
        temperature: softmax temperature ``T``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[B]``).

    Returns:
        A scalar, or ``[B]`` with ``reduction="none"``.
    """
    if t_logits.dim() == s_logits.dim():
        t_logits = t_logits.unsqueeze(0)
    log_p_s = F.log_softmax(s_logits / temperature, dim=-1)
    log_p_t = torch.logsumexp(F.log_softmax(t_logits / temperature, dim=-1), dim=0)
    if t_logits.shape[0] > 1:
        log_p_t = log_p_t - math.log(t_logits.shape[0])
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1) * temperature**2
    return reduce(per_sample, reduction)


def confidence_weights(t_logits: Tensor, y: Tensor) -> Tensor:
    """CA-MKD's per-sample teacher weights from each teacher's cross-entropy on the true label.

    ``w_{m,b} = (1 - softmax_m(CE(t_m[b], y_b))) / (M - 1)``: over the M teachers the weights of a sample sum to 1,
    and a teacher whose prediction is closer to the one-hot label (lower CE) gets more weight. One teacher gets
    weight 1 (the formula is 0/0 there; the reference falls back to plain averaging, i.e. weight 1).

    Zhang, Chen, Wang, "Confidence-Aware Multi-Teacher Knowledge Distillation", ICASSP 2022, arXiv 2201.00007;
    matches Rorozhl/CA-MKD@acc8c2b ``helper/loops.py`` (``CAMKD`` ensemble) and ``distiller_zoo/CAMKD.py``.
    Gradients flow through ``t_logits`` (CA-MKD's feature weights are computed from student features).

    Args:
        t_logits: ``[M, B, K]`` logits of M teachers (or of the teachers' classifiers on student features).
        y: ``[B]`` labels.

    Returns:
        ``[M, B]`` weights.
    """
    m = t_logits.shape[0]
    if m == 1:
        return torch.ones(t_logits.shape[:2], dtype=t_logits.dtype, device=t_logits.device)
    ce = F.cross_entropy(t_logits.flatten(0, 1), y.repeat(m), reduction="none").view(m, -1)
    return (1.0 - F.softmax(ce, dim=0)) / (m - 1)
