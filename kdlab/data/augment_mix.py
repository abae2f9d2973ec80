"""Mixup and CutMix on a training batch, with mixed (soft) labels beside the dominant hard label.

Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond Empirical Risk Minimization", ICLR 2018, arXiv 1710.09412;
Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features", ICCV 2019,
arXiv 1905.04899. Reference implementation: timm's ``Mixup`` (``timm/data/mixup.py``) with its defaults
``mode='batch'`` and ``correct_lam=True``; the golden tests compare against it.

Per batch (timm's default ``mode='batch'``, kdlab's default ``data.mix_mode: batch``: one lambda for the whole
batch): with probability ``mix_prob`` the batch is mixed; with both alphas > 0, CutMix is chosen with probability
``mix_switch_prob`` and Mixup otherwise; ``lambda ~ Beta(alpha, alpha)`` of the chosen op. Image ``i`` is mixed with
image ``B - 1 - i`` (the batch reversed). ``data.mix_mode: elem`` (timm's ``mode='elem'``) draws all of it per image:
whether, which op, lambda and box, each image with its own partner ``B - 1 - i`` of the unmixed batch:

- Mixup: ``x_i <- lambda x_i + (1 - lambda) x_{B-1-i}``.
- CutMix: a box of sides ``int(H sqrt(1 - lambda))`` by ``int(W sqrt(1 - lambda))`` centred at a uniform pixel
  ``(cy, cx)``, clipped to the image, is pasted from ``x_{B-1-i}``; lambda is then corrected to the area kept,
  ``1 - box_area / (H W)`` (timm's ``correct_lam``).

Labels: ``y_soft = lambda onehot(y_i) + (1 - lambda) onehot(y_{B-1-i})`` (``[B, K]``) and ``y`` becomes the dominant
label, ``y_i`` if ``lambda >= 0.5`` else ``y_{B-1-i}``. Label smoothing is not applied here: a method's cross-entropy
(``StepIO.cross_entropy``) smooths the soft target, ``(1 - eps) y_soft + eps / K``, which equals timm's
``mixup_target(..., smoothing=eps)`` (smooth, then mix) because mixing and smoothing are both affine.

Deviations from timm:
- The draws come from a numpy generator seeded per ``(seed, epoch, step)`` (timm uses the global numpy RNG), so a
  resumed run replays the same mixing; the batch need not be even (an odd batch's middle image mixes with itself
  and keeps its label), since kdlab's last batch of an epoch may be odd. No ``cutmix_minmax``, ``pair`` mode or
  multi-label targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ElemMixParams",
    "MixParams",
    "MixSettings",
    "cutmix_box",
    "draw_mix",
    "draw_mix_elem",
    "mix_batch",
    "mix_batch_elem",
    "mix_images",
    "mix_images_elem",
    "mix_labels",
]


@dataclass(frozen=True)
class MixSettings:
    """Mixup/CutMix settings (``data.mixup_alpha``, ``data.cutmix_alpha``, ``data.mix_prob``,
    ``data.mix_switch_prob``)."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = "batch"

    @classmethod
    def from_config(cls, cfg) -> MixSettings:
        """From a :class:`~kdlab.config.DataConfig`."""
        return cls(cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob, cfg.mix_switch_prob, cfg.mix_mode)

    @property
    def active(self) -> bool:
        """Whether batches can be mixed at all."""
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0


@dataclass(frozen=True)
class MixParams:
    """The mixing of one batch.

    Attributes:
        lam: the weight of each image's own content (after CutMix's area correction); 1 means not mixed.
        box: CutMix's ``(y0, y1, x0, x1)`` (half-open, clipped), or None for Mixup or no mixing.
    """

    lam: float = 1.0
    box: tuple[int, int, int, int] | None = None


def cutmix_box(height: int, width: int, lam: float, cy: int, cx: int) -> tuple[tuple[int, int, int, int], float]:
    """CutMix's box for ``lam`` centred at ``(cy, cx)``, clipped to the image, and the corrected lambda.

    Sides ``int(H sqrt(1 - lam))`` and ``int(W sqrt(1 - lam))`` (timm's ``rand_bbox``); the corrected lambda is
    ``1 - (y1 - y0)(x1 - x0) / (H W)``.

    Returns:
        ``((y0, y1, x0, x1), lam_corrected)``.
    """
    ratio = float(np.sqrt(1.0 - lam))
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    y0, y1 = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + (cut_h + 1) // 2, 0, height))
    x0, x1 = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + (cut_w + 1) // 2, 0, width))
    return (y0, y1, x0, x1), 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)


def draw_mix(settings: MixSettings, rng: np.random.Generator, height: int, width: int) -> MixParams:
    """Draw one batch's mixing, in the order of timm's ``Mixup._params_per_batch`` then ``rand_bbox``."""
    if not settings.active or rng.random() >= settings.mix_prob:
        return MixParams()
    use_cutmix = settings.cutmix_alpha > 0
    if settings.mixup_alpha > 0 and settings.cutmix_alpha > 0:
        use_cutmix = bool(rng.random() < settings.switch_prob)
    alpha = settings.cutmix_alpha if use_cutmix else settings.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    if not use_cutmix:
        return MixParams(lam)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    box, lam = cutmix_box(height, width, lam, cy, cx)
    return MixParams(lam, box)


def mix_images(x: Tensor, params: MixParams) -> Tensor:
    """Mix ``[B, C, H, W]`` float images with the reversed batch as ``params`` says (a new tensor)."""
    if params.lam == 1.0 and params.box is None:
        return x
    other = x.flip(0)
    if params.box is None:
        return torch.lerp(other, x, params.lam)  # lam x + (1 - lam) other, one pass after the flip
    y0, y1, x0, x1 = params.box
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = other[:, :, y0:y1, x0:x1]
    return out


def mix_labels(y: Tensor, num_classes: int, lam: float) -> tuple[Tensor, Tensor]:
    """Soft and dominant labels of a batch mixed with weight ``lam`` against the reversed batch.

    Args:
        y: ``[B]`` integer labels.
        num_classes: ``K``.
        lam: the weight of each sample's own label.

    Returns:
        ``y_soft`` ``[B, K]`` float32 (rows sum to 1) and the dominant ``[B]`` labels (own label when ``lam >= 0.5``).
    """
    onehot = F.one_hot(y.long(), num_classes).to(torch.float32)
    y_soft = lam * onehot + (1.0 - lam) * onehot.flip(0)
    return y_soft, (y if lam >= 0.5 else y.flip(0))


def mix_batch(
    x: Tensor, y: Tensor, num_classes: int, params: MixParams, views: dict[str, Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """Mix images (and every extra view, identically) and labels of one batch.

    Args:
        x: ``[B, C, H, W]`` float images.
        y: ``[B]`` integer labels.
        num_classes: ``K``.
        params: from :func:`draw_mix`.
        views: extra views of the same images (each ``[B, C, H, W]``), mixed with the same pairs, lambda and box.

    Returns:
        ``(x, y_soft [B, K], y_dominant [B], views)``.
    """
    y_soft, y_dom = mix_labels(y, num_classes, params.lam)
    mixed_views = {k: mix_images(v, params) for k, v in (views or {}).items()}
    return mix_images(x, params), y_soft, y_dom, mixed_views


@dataclass(frozen=True)
class ElemMixParams:
    """The mixing of one batch drawn per image (``mode='elem'``).

    Attributes:
        lam: ``[B]`` weight of each image's own content (after CutMix's area correction); 1 means not mixed.
        boxes: ``[B, 4]`` CutMix boxes ``(y0, y1, x0, x1)`` (half-open, clipped); ``(0, 0, 0, 0)`` for Mixup or none.
        cutmix: ``[B]`` whether image ``i`` is mixed by CutMix.
    """

    lam: np.ndarray
    boxes: np.ndarray
    cutmix: np.ndarray


def draw_mix_elem(
    settings: MixSettings, rng: np.random.Generator, batch: int, height: int, width: int
) -> ElemMixParams:
    """Draw every image's mixing, in the order of timm's ``Mixup._params_per_elem`` (then one centre per image)."""
    lam = np.ones(batch)
    cut = np.zeros(batch, dtype=bool)
    if settings.mixup_alpha > 0 and settings.cutmix_alpha > 0:
        cut = rng.random(batch) < settings.switch_prob
        lam_mix = np.where(
            cut,
            rng.beta(settings.cutmix_alpha, settings.cutmix_alpha, size=batch),
            rng.beta(settings.mixup_alpha, settings.mixup_alpha, size=batch),
        )
    elif settings.mixup_alpha > 0:
        lam_mix = rng.beta(settings.mixup_alpha, settings.mixup_alpha, size=batch)
    else:
        cut = np.ones(batch, dtype=bool)
        lam_mix = rng.beta(settings.cutmix_alpha, settings.cutmix_alpha, size=batch)
    lam = np.where(rng.random(batch) < settings.mix_prob, lam_mix, lam)
    cut &= lam != 1.0
    cy, cx = rng.integers(0, height, size=batch), rng.integers(0, width, size=batch)
    boxes = np.zeros((batch, 4), dtype=np.int64)
    for i in np.flatnonzero(cut):  # per-image box arithmetic on the host (a few integers each)
        box, lam[i] = cutmix_box(height, width, float(lam[i]), int(cy[i]), int(cx[i]))
        boxes[i] = box
    return ElemMixParams(lam, boxes, cut)


def mix_images_elem(x: Tensor, params: ElemMixParams) -> Tensor:
    """Mix ``[B, C, H, W]`` float images with the reversed batch, each image by its own lambda or box (a new
    tensor): Mixup images blend, CutMix images take their box from the partner."""
    b, _, h, w = x.shape
    other = x.flip(0)
    cut = torch.as_tensor(params.cutmix, device=x.device)
    lam = torch.as_tensor(params.lam, dtype=x.dtype, device=x.device)
    blend_w = torch.where(cut, torch.ones_like(lam), lam).view(b, 1, 1, 1)  # CutMix images keep themselves outside
    out = torch.lerp(other, x, blend_w)
    boxes = torch.as_tensor(params.boxes, device=x.device)
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= boxes[:, :1]) & (rows < boxes[:, 1:2])  # [B, H]
    in_cols = (cols >= boxes[:, 2:3]) & (cols < boxes[:, 3:4])  # [B, W]
    inside = (in_rows[:, :, None] & in_cols[:, None, :] & cut[:, None, None]).unsqueeze(1)  # [B, 1, H, W]
    return torch.where(inside, other, out)


def mix_batch_elem(
    x: Tensor, y: Tensor, num_classes: int, params: ElemMixParams, views: dict[str, Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """:func:`mix_batch` with per-image draws: ``(x, y_soft [B, K], y_dominant [B], views)``."""
    lam = torch.as_tensor(params.lam, dtype=torch.float32, device=y.device)[:, None]
    onehot = F.one_hot(y.long(), num_classes).to(torch.float32)
    y_soft = lam * onehot + (1.0 - lam) * onehot.flip(0)
    y_dom = torch.where(lam[:, 0] >= 0.5, y, y.flip(0))
    mixed_views = {k: mix_images_elem(v, params) for k, v in (views or {}).items()}
    return mix_images_elem(x, params), y_soft, y_dom, mixed_views
