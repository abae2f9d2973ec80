"""Losses between a student's regressed (projected) features and the teacher's: VID, OFD, SRRL.

Student first, teacher second. The learnable regressors themselves are method adapters; these functions take
their outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ofd", "ofd_margin", "srrl", "vid_nll"]


def vid_nll(pred_mean: Tensor, target: Tensor, log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """VID's Gaussian negative log-likelihood of the teacher's features under the student's prediction.

    Ahn, Hu, Damianou, Lawrence, Dai, "Variational Information Distillation for Knowledge Transfer", CVPR 2019,
    arXiv 1904.05835. Reference: HobbitLong/RepDistiller@b84f547 ``distiller_zoo/VID.py`` (``VIDLoss.forward``).
    With a per-channel variance ``var_c = softplus(log_scale_c) + eps``::

        vid = mean_{b, c, h, w} 0.5 * ((mu - t)^2 / var_c + log var_c)

    (the constant ``0.5 log 2 pi`` is dropped, as in the reference). Every channel has ``B * H * W`` entries, so the
    mean of ``log var_c`` over all entries is its mean over channels: it is added once rather than broadcast over the
    map (the same value up to rounding; two passes over ``[B, C, H, W]`` fewer, forward and backward).

    Args:
        pred_mean: ``[B, C, H, W]`` (or ``[B, C]``) the student's regressed features ``mu``.
        target: the teacher's features, same shape.
        log_scale: ``[C]`` per-channel parameters of the variance.
        eps: variance floor.

    Returns:
        A scalar.
    """
    var = (F.softplus(log_scale) + eps).to(pred_mean)
    diff = pred_mean - target
    return 0.5 * ((diff * diff) / var.view(1, -1, *([1] * (pred_mean.dim() - 2)))).mean() + 0.5 * torch.log(var).mean()


def ofd_margin(bn_weight: Tensor, bn_bias: Tensor, min_mass: float = 0.001) -> Tensor:
    """OFD's per-channel margin: the expected value of a teacher pre-activation given that it is negative.

    Heo, Kim, Yun, Park, Kwak, Choi, "A Comprehensive Overhaul of Feature Distillation", ICCV 2019, arXiv
    1904.01866. Reference: megvii-research/mdistiller@a08d46f ``mdistiller/distillers/OFD.py``
    (``init_ofd_modules``). The BN before the ReLU makes the pre-activation of channel ``c`` approximately
    ``N(beta, gamma^2)``; with ``s = |gamma|``, ``m = beta``::

        margin = m - s * phi(m / s) / Phi(-m / s)   if Phi(-m / s) > min_mass,   else  -3 s

    (``phi``/``Phi``: standard normal density and distribution function). Computed in float64.

    Args:
        bn_weight: ``[C]`` the BN's ``gamma``.
        bn_bias: ``[C]`` the BN's ``beta``.
        min_mass: below this negative mass the margin is ``-3 s`` (the reference's 0.001).

    Returns:
        ``[C]`` margins (dtype and device of ``bn_weight``).
    """
    s = bn_weight.detach().double().abs().clamp_min(1e-12)
    m = bn_bias.detach().double()
    mass = torch.special.ndtr(-m / s)
    density = torch.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
    expected = m - s * density / mass.clamp_min(torch.finfo(torch.float64).tiny)
    margin = torch.where(mass > min_mass, expected, -3 * s)
    return margin.to(dtype=bn_weight.dtype)


def ofd(source: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """OFD's partial L2 distance between the student's connector output and the teacher's pre-activation.

    Reference: mdistiller ``OFD.py`` (``feat_loss``). Elementwise, with ``s`` = source, ``t`` = target and the
    channel's margin ``m``::

        d = (s - m)^2  if s > m and t <= m
            (s - t)^2  if s > t and m < t <= 0
            (s - t)^2  if t > 0
            0          otherwise

    summed over ``C, H, W`` and averaged over the batch.

    Args:
        source: ``[B, C, H, W]`` the student's features through the connector.
        target: ``[B, C, H, W]`` the teacher's pre-activation features (already resized to the source's size).
        margin: ``[C]`` from :func:`ofd_margin`.

    Returns:
        A scalar.
    """
    m = margin.to(source).view(1, -1, *([1] * (source.dim() - 2)))
    below = (source > m) & (target <= m)
    between = (source > target) & (target > m) & (target <= 0)
    positive = target > 0
    sq = (source - target) ** 2
    loss = (source - m) ** 2 * below + sq * between + sq * positive
    return loss.mean(dim=0).sum()


def srrl(s_feat: Tensor, t_feat: Tensor, s_logits: Tensor, t_logits: Tensor) -> Tensor:
    """SRRL: feature matching plus softmax regression through the teacher's classifier.

    Yang, Martinez, Bulat, Tzimiropoulos, "Knowledge Distillation via Softmax Regression Representation
    Learning", ICLR 2021 (OpenReview ZzwDy_wiWv). Reference: DefangChen/SimKD@2b389c3 ``models/util.py`` (``SRRL``)
    and ``helper/loops.py``::

        srrl = mse(s_feat, t_feat) + mse(s_logits, t_logits)

    Args:
        s_feat: ``[B, D]`` the student's embedding projected to the teacher's width.
        t_feat: ``[B, D]`` the teacher's embedding.
        s_logits: ``[B, K]`` the teacher's classifier applied to ``s_feat``.
        t_logits: ``[B, K]`` the teacher's logits.

    Returns:
        A scalar.
    """
    return F.mse_loss(s_feat, t_feat) + F.mse_loss(s_logits, t_logits)
