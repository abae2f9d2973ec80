"""Dense (per-pixel) forms of the logit losses, for segmentation: logits ``[B, K, h, w]``, labels ``[B, H, W]``.

Every term excludes the pixels labelled :data:`IGNORE_INDEX` (255):

- :func:`dense_cross_entropy`: the logits are upsampled to the label size (bilinear, ``align_corners=True``) and the
  cross-entropy is the mean over labelled pixels, as the reference's ``SegCrossEntropyLoss`` (hunto/DIST_KD
  ``segmentation/losses/loss.py``; CIRKD ``losses/loss.py``).
- :func:`pixel_rows` turns logits into one ``[K]`` row per labelled pixel *at the logits' resolution* (the labels
  are downsampled with nearest interpolation to find the ignored pixels), so that the classification forms apply
  unchanged: pixel-wise KD is :func:`kdlab.losses.kd` over the rows (the reference's ``CriterionKD``: a KL with
  ``batchmean`` over pixels, times ``T^2``) and dense DIST is :func:`kdlab.losses.dist` over the rows (the
  reference's ``DIST`` reshapes ``[N, C, H, W]`` with ``transpose(1, 3).reshape(-1, C)``: inter-class relation per
  pixel over classes, intra-class relation per class over pixels).
- :func:`channel_wise_divergence`: CWD (Shu et al., ICCV 2021) with the ignored positions left out of each channel's
  spatial softmax.

Deviation from the references: they compute KD / DIST / CWD over every pixel, including those labelled ignore
(which are often void regions and the padding of the random crop); kdlab excludes them from every loss term. Pass
``ignore_index=None`` to :func:`pixel_rows` / ``mask=None`` to :func:`channel_wise_divergence` for the references'
all-pixel form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Label of pixels no loss term counts (the metrics' :data:`kdlab.metrics.IGNORE_INDEX`).
IGNORE_INDEX = 255


def upsample_to(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """``[B, K, h, w]`` -> ``[B, K, H, W]`` bilinearly with ``align_corners=True`` (unchanged when equal)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size, mode="bilinear", align_corners=True)


def dense_cross_entropy(
    logits: Tensor,
    y: Tensor,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Cross-entropy of ``[B, K, h, w]`` logits (upsampled to ``[H, W]``) against ``[B, H, W]`` labels.

    Returns the mean over labelled pixels (``"mean"``), their sum (``"sum"``), or ``[B]`` per-image means over each
    image's labelled pixels (``"none"``; 0 for an image without any).
    """
    logits = upsample_to(logits, tuple(y.shape[-2:]))
    kw = {"ignore_index": ignore_index, "label_smoothing": label_smoothing}
    if reduction != "none":
        return F.cross_entropy(logits, y, reduction=reduction, **kw)
    per_pixel = F.cross_entropy(logits, y, reduction="none", **kw)
    valid = (y != ignore_index).flatten(1)
    return per_pixel.flatten(1).sum(1) / valid.sum(1).clamp_min(1)


def labels_at(y: Tensor, size: tuple[int, int]) -> Tensor:
    """``[B, H, W]`` labels resampled to ``[B, h, w]`` with nearest interpolation (unchanged when equal)."""
    if tuple(y.shape[-2:]) == tuple(size):
        return y
    return F.interpolate(y[:, None].float(), size, mode="nearest")[:, 0].long()


def valid_mask(y: Tensor, size: tuple[int, int], ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``[B, h, w]`` bool: the pixels of a ``[B, h, w]`` prediction whose (nearest) label is not ``ignore_index``."""
    return labels_at(y, size) != ignore_index


def pixel_rows(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """One ``[K]`` row per pixel: ``[..., B, K, h, w]`` -> ``[..., P, K]``.

    Args:
        logits: dense logits; leading dims (stacked teachers ``[M, ...]``) are kept.
        mask: ``[B, h, w]`` bool, the pixels to keep (:func:`valid_mask`); None keeps all ``P = B * h * w``.
    """
    rows = logits.movedim(-3, -1)  # [..., B, h, w, K]
    rows = rows.reshape(*rows.shape[:-4], -1, rows.shape[-1])
    if mask is None:
        return rows
    return rows[..., mask.reshape(-1), :]


def channel_wise_divergence(
    s_map: Tensor, t_map: Tensor, tau: float = 1.0, mask: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """Channel-wise distillation (Shu, Liu, Gao, Yan, Shen, "Channel-wise Knowledge Distillation for Dense
    Prediction", ICCV 2021, arXiv:2011.13256).

    Each channel ``c`` of an ``[B, C, h, w]`` map becomes a distribution over positions,
    ``p_c = softmax_{h,w}(x_c / tau)``, and the loss is ``tau^2 / (B * C) * sum_{b,c} KL(p^t_{b,c} || p^s_{b,c})``,
    as mmrazor's ``ChannelWiseDivergence`` (``mmrazor/models/losses/cwd.py``) and the authors' code.

    Args:
        s_map: ``[B, C, h, w]`` student logits or features.
        t_map: ``[B, C, h, w]`` teacher maps, or ``[M, B, C, h, w]`` stacked teachers (one value per teacher).
        tau: temperature.
        mask: ``[B, h, w]`` bool, the positions that take part in each channel's softmax; None for all (the
            reference).
        reduction: ``"mean"`` (the reference's scalar) or ``"none"`` (``[B]``: per image, the sum over channels
            divided by ``C``; their mean is the ``"mean"`` value).

    Returns:
        A scalar (``[M]`` for stacked teachers), or ``[B]`` (``[M, B]``) with ``reduction="none"``.
    """
    s = s_map.flatten(-2) / tau  # [B, C, P]
    t = t_map.flatten(-2) / tau  # [..., B, C, P]
    if mask is not None:
        keep = mask.flatten(1)[:, None, :]  # [B, 1, P]
        s = s.masked_fill(~keep, float("-inf"))
        t = t.masked_fill(~keep, float("-inf"))
    log_p_s = F.log_softmax(s, dim=-1)
    log_p_t = F.log_softmax(t, dim=-1)
    p_t = log_p_t.exp()
    kl = p_t * (log_p_t - log_p_s)
    if mask is not None:
        kl = torch.where(keep, kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    per_image = kl.sum(dim=(-1, -2)) * tau**2 / s_map.shape[1]  # [..., B]
    if reduction == "none":
        return per_image
    if reduction != "mean":
        raise ValueError(f"channel_wise_divergence: reduction must be 'mean' or 'none', got {reduction!r}")
    return per_image.mean(dim=-1)


__all__ = [
    "IGNORE_INDEX",
    "channel_wise_divergence",
    "dense_cross_entropy",
    "labels_at",
    "pixel_rows",
    "upsample_to",
    "valid_mask",
]
