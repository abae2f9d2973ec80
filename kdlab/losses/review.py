"""ReviewKD's hierarchical context loss (HCL).

Chen, Liu, Zhao, Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021, arXiv 2104.09044.
Reference: megvii-research/mdistiller@a08d46f ``mdistiller/distillers/ReviewKD.py`` (``hcl_loss``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = ["hcl"]


def hcl(s_feats: Sequence[Tensor], t_feats: Sequence[Tensor], levels: Sequence[int] = (4, 2, 1)) -> Tensor:
    """Hierarchical context loss, summed over feature pairs.

    For each pair of maps ``(f_s, f_t)`` of height ``H``: the MSE of the maps plus, for each pyramid level ``l``
    with ``l < H``, the MSE of both maps average-pooled to ``l x l``, weighted ``1/2, 1/4, ...`` in level order;
    the sum is divided by the total weight ``1 + 1/2 + ...``::

        hcl = sum_pairs (mse(f_s, f_t) + sum_j 2^-j mse(pool_l_j(f_s), pool_l_j(f_t))) / (1 + sum_j 2^-j)

    Args:
        s_feats: student maps (already fused/projected to the teacher's shapes), each ``[B, C_i, H_i, W_i]``.
        t_feats: teacher maps of the same shapes.
        levels: pyramid output sizes, in the order their weights halve.

    Returns:
        A scalar.
    """
    if len(s_feats) != len(t_feats):
        raise ValueError(f"hcl: {len(s_feats)} student maps against {len(t_feats)} teacher maps")
    if not s_feats:
        raise ValueError("hcl: no feature maps")
    total: Tensor | float = 0.0
    for s_feat, t_feat in zip(s_feats, t_feats):
        if s_feat.shape != t_feat.shape:
            raise ValueError(f"hcl: shapes differ, {tuple(s_feat.shape)} against {tuple(t_feat.shape)}")
        height = s_feat.shape[2]
        loss = F.mse_loss(s_feat, t_feat)
        weight, weight_sum = 1.0, 1.0
        for level in levels:
            if level >= height:
                continue
            weight /= 2.0
            pooled_s = F.adaptive_avg_pool2d(s_feat, (level, level))
            pooled_t = F.adaptive_avg_pool2d(t_feat, (level, level))
            loss = loss + weight * F.mse_loss(pooled_s, pooled_t)
            weight_sum += weight
        total = total + loss / weight_sum
    return total  # type: ignore[return-value]
