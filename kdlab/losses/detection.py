"""Losses on object-detection outputs (issue 20): DIST on per-anchor sigmoid scores or per-RoI softmax scores, KD on
the same outputs, feature mimicking on FPN levels, and the helpers that arrange detection outputs into rows.

Plain functions over tensors, student first, teacher second (:mod:`kdlab.losses`). The methods that use them are
:mod:`kdlab.methods.dist`, :mod:`kdlab.methods.kd`, :mod:`kdlab.methods.cwd` and :mod:`kdlab.methods.mimic`, through
:mod:`kdlab.methods._detection`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.losses.logit import _pearson


def _stack_check(name: str, s: Tensor, t: Tensor) -> int:
    extra = t.dim() - s.dim()
    if s.dim() != 2 or extra not in (0, 1) or t.shape[extra:] != s.shape:
        raise ValueError(
            f"{name}: student rows must be [R, C] and teacher rows the same shape (optionally [M, R, C]), got "
            f"{tuple(s.shape)} and {tuple(t.shape)}"
        )
    return extra


def detection_dist(
    s_rows: Tensor,
    t_rows: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
    use_sigmoid: bool = False,
) -> Tensor:
    """DIST on detection rows: ``tau^2 * (beta * inter + gamma * intra)``.

    With ``y = sigmoid(z / tau)`` (``use_sigmoid``: each entry an independent class score, RetinaNet) or
    ``y = softmax(z / tau)`` over the row (Faster R-CNN's ``K + 1`` RoI classes), ``inter = 1 - mean_r
    pearson(y_s[r, :], y_t[r, :])`` (each row's scores) and ``intra = 1 - mean_c pearson(y_s[:, c], y_t[:, c])``
    (each column across the rows), pearson being the cosine of the centred vectors with 1e-8 added to the product of
    norms. Matches the DIST authors' detection loss, hunto/MasKD ``mmrazor/mmrazor/models/losses/dist_kd.py``
    (``DIST(beta, gamma, use_sigmoid)``, no temperature: ``tau = 1``), and open-mmlab/mmrazor ``DISTLoss`` (softmax,
    ``tau``, ``tau^2``).

    Args:
        s_rows: ``[R, C]`` student logits, one row per sample of the relation (see :func:`anchor_rows`).
        t_rows: ``[R, C]`` teacher logits, or ``[M, R, C]`` for ``M`` teachers at once.
        beta: weight of the inter (per-row) relation.
        gamma: weight of the intra (per-column) relation.
        tau: temperature (1 in the authors' detection recipes).
        use_sigmoid: sigmoid per entry instead of a softmax over each row.

    Returns:
        A scalar, or ``[M]`` with stacked teachers.
    """
    _stack_check("detection_dist", s_rows, t_rows)
    if use_sigmoid:
        y_s, y_t = torch.sigmoid(s_rows / tau), torch.sigmoid(t_rows / tau)
    else:
        y_s, y_t = F.softmax(s_rows / tau, dim=-1), F.softmax(t_rows / tau, dim=-1)
    inter = 1.0 - _pearson(y_s, y_t, dim=-1).mean(dim=-1)
    intra = 1.0 - _pearson(y_s, y_t, dim=-2).mean(dim=-1)
    return tau**2 * (beta * inter + gamma * intra)


def sigmoid_kd(s_rows: Tensor, t_rows: Tensor, temperature: float = 1.0) -> Tensor:
    """KD for independent sigmoid class scores: ``T^2 * mean_r sum_c KL(Bern(p_t) || Bern(p_s))``.

    ``p = sigmoid(z / T)`` per entry; each entry is a two-outcome distribution, so Hinton's KL becomes
    ``p_t log(p_t / p_s) + (1 - p_t) log((1 - p_t) / (1 - p_s))``, summed over the classes of a row (an anchor) and
    averaged over rows, times ``T^2`` (the binary cross-entropy with the teacher's scores as targets, minus the
    teacher's entropy: the same gradient). Computed from log-sigmoids, so saturated scores stay finite.

    Args:
        s_rows: ``[R, C]`` student logits.
        t_rows: ``[R, C]`` teacher logits, or ``[M, R, C]``.
        temperature: ``T``.

    Returns:
        A scalar, or ``[M]`` with stacked teachers.
    """
    _stack_check("sigmoid_kd", s_rows, t_rows)
    zs, zt = s_rows / temperature, t_rows / temperature
    log_ps, log_qs = F.logsigmoid(zs), F.logsigmoid(-zs)
    log_pt, log_qt = F.logsigmoid(zt), F.logsigmoid(-zt)
    kl = log_pt.exp() * (log_pt - log_ps) + log_qt.exp() * (log_qt - log_qs)
    return kl.sum(dim=-1).mean(dim=-1) * temperature**2


def anchor_rows(cls: Tensor, level_sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Per-anchor class logits ``[B, A, K]`` as one ``[B * h_l * w_l, a * K]`` matrix per FPN level.

    ``A = a * sum_l h_l * w_l`` anchors in torchvision's order (level by level, finest first; inside a level
    position-major, then the ``a`` anchors of a position, then the classes), so a level's row holds every anchor and
    class of one position: the layout of mmdetection's ``retina_cls`` map ``[B, a * K, h, w]`` that the DIST authors
    distil (``transpose(1, 3).reshape(-1, a * K)``, once per level: hunto/MasKD ``dist_kd.py`` with
    ``SingleTeacherDistiller``, one loss per call of the shared head).

    Args:
        cls: ``[B, A, K]`` (or ``[M, B, A, K]``, stacked teachers: rows ``[M, B * h * w, a * K]``).
        level_sizes: ``(h_l, w_l)`` of every level, in the order of ``A``.

    Returns:
        One tensor per level.

    Raises:
        ValueError: when ``A`` is not a multiple of the levels' positions.
    """
    positions = sum(h * w for h, w in level_sizes)
    lead, (b, a_total, k) = cls.shape[:-3], cls.shape[-3:]
    if positions == 0 or a_total % positions:
        raise ValueError(
            f"anchor_rows: {a_total} anchors do not split over FPN levels of sizes {list(level_sizes)} "
            f"({positions} positions); the 'cls' tap and the 'fpn.*' taps must come from one forward"
        )
    per_pos = a_total // positions
    out, start = [], 0
    for h, w in level_sizes:
        n = h * w * per_pos
        level = cls[..., start : start + n, :]
        out.append(level.reshape(*lead, b * h * w, per_pos * k))
        start += n
    return out


def box_mask(boxes: Tensor, labels: Tensor, size: tuple[int, int], stride: float) -> Tensor:
    """``[B, h, w]`` bool: the positions of a feature map whose cell centre lies inside a ground-truth box.

    A position ``(i, j)`` at ``stride`` has its centre at ``((j + 0.5) * stride, (i + 0.5) * stride)`` in image
    pixels; it is kept when that point lies in ``[x1, x2] x [y1, y2]`` of some box whose label is ``>= 0`` (padded
    rows and crowd boxes carry ``-1``).

    Args:
        boxes: ``[B, N, 4]`` xyxy in the (resized, padded) image's pixels.
        labels: ``[B, N]``; rows with ``-1`` are ignored.
        size: ``(h, w)`` of the feature map.
        stride: image pixels per feature position.
    """
    h, w = size
    ys = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) * stride  # [h]
    xs = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) * stride  # [w]
    x1, y1, x2, y2 = (boxes[..., i, None, None] for i in range(4))  # [B, N, 1, 1]
    inside_y = (ys[:, None] >= y1) & (ys[:, None] <= y2)  # [B, N, h, 1]
    inside_x = (xs[None, :] >= x1) & (xs[None, :] <= x2)  # [B, N, 1, w]
    inside = inside_y & inside_x & (labels >= 0)[..., None, None]  # [B, N, h, w]
    return inside.any(dim=1)


def mimic_mse(s_feat: Tensor, t_feat: Tensor, mask: Tensor | None = None) -> Tensor:
    """Feature mimicking: the mean squared error between an (adapted) student map and the teacher's map.

    Without a mask, ``mean (s - t)^2`` over every element (``nn.MSELoss()``, the DIST authors' ``MSELoss`` on each
    FPN level). With ``mask`` (``[B, h, w]`` bool), the squared errors of the kept positions only, divided by
    ``C`` times the number of kept positions (0 when no position is kept).

    Args:
        s_feat: ``[B, C, h, w]`` adapted student map.
        t_feat: ``[B, C, h, w]`` teacher map.
        mask: optional ``[B, h, w]`` bool.

    Returns:
        A scalar.
    """
    if s_feat.shape != t_feat.shape:
        raise ValueError(f"mimic_mse: student map {tuple(s_feat.shape)} and teacher map {tuple(t_feat.shape)} differ")
    if mask is None:
        return F.mse_loss(s_feat, t_feat)
    sq = (s_feat - t_feat).pow(2).sum(dim=1)  # [B, h, w]
    keep = mask.to(sq.dtype)
    return (sq * keep).sum() / (keep.sum() * s_feat.shape[1]).clamp_min(1.0)


__all__ = ["anchor_rows", "box_mask", "detection_dist", "mimic_mse", "sigmoid_kd"]
