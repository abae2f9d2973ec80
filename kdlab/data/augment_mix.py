"""Mixup and CutMix on a training batch, with mixed (soft) labels beside the dominant hard label.

Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond Empirical Risk Minimization", ICLR 2018, arXiv 1710.09412;
Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features", ICCV 2019,
arXiv 1905.04899. Reference implementation: timm's ``Mixup`` (``timm/data/mixup.py``) with its defaults
``mode='batch'`` and ``correct_lam=True``; the golden tests compare against it.

Per batch (timm's ``mode='batch'``, the only mode here: one lambda for the whole batch): with probability
``mix_prob`` the batch is mixed; with both alphas > 0, CutMix is chosen with probability ``mix_switch_prob`` and
Mixup otherwise; ``lambda ~ Beta(alpha, alpha)`` of the chosen op. Image ``i`` is mixed with image ``B - 1 - i`` (the
batch reversed):

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
  and keeps its label), since kdlab's last batch of an epoch may be odd. No ``cutmix_minmax``, ``pair``/``elem``
  modes or multi-label targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MixParams", "MixSettings", "cutmix_box", "draw_mix", "mix_batch", "mix_images", "mix_labels"]


@dataclass(frozen=True)
class MixSettings:
    """Mixup/CutMix settings (``data.mixup_alpha``, ``data.cutmix_alpha``, ``data.mix_prob``,
    ``data.mix_switch_prob``)."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5

    @classmethod
    def from_config(cls, cfg) -> MixSettings:
        """From a :class:`~kdlab.config.DataConfig`."""
        return cls(cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob, cfg.mix_switch_prob)

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
