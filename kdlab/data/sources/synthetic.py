"""Seeded class-conditional synthetic images of any shape and class count, for tests and benchmarks.

Each class has a random smooth template (Gaussian noise on a coarse grid of at most 4x4 per channel, upsampled
bilinearly). A sample is ``128 + 48 * shift(template[y]) + 64 * smooth_noise + 24 * pixel_noise + brightness``,
rounded and clipped to uint8: ``shift`` rolls the template by up to ``S // 8`` pixels along each axis,
``smooth_noise`` is drawn like a template but fresh for every sample, ``brightness`` is one offset per sample
(std 16). The classes are separable but overlap: nearest-class-mean on raw pixels beats chance clearly without
being perfect (about 83 % at 10 classes, 32x32x3), and translation-invariant models can do better.
Labels are balanced (``i % K`` shuffled). Everything is a function of the seed (``data.split_seed``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlab.data.base import DataError, DatasetSplits, ImageSet, register_dataset
from kdlab.data.sources._common import channel_stats

TEMPLATE_SCALE = 48.0
"""Amplitude of the class templates (uint8 units)."""
SMOOTH_NOISE_SCALE = 64.0
"""Amplitude of the per-sample smooth noise, drawn like a template."""
PIXEL_NOISE_SCALE = 24.0
"""Std of the per-pixel noise."""
BRIGHTNESS_SCALE = 16.0
"""Std of a per-sample brightness offset."""
_CHUNK = 4096


def _smooth(noise: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, C, g, g]`` coarse noise -> ``[B, C, size, size]``, bilinear."""
    return F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)


def _shift(images: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Roll each of ``images [B, C, S, S]`` by its own random offset in ``-max_shift..max_shift`` along H and W."""
    b, c, size, _ = images.shape
    offsets = torch.randint(-max_shift, max_shift + 1, (2, b), generator=gen)
    if max_shift == 0:
        return images
    base = torch.arange(size)
    rows = ((base[None, :] + offsets[0][:, None]) % size)[:, None, :, None].expand(b, c, size, size)
    cols = ((base[None, :] + offsets[1][:, None]) % size)[:, None, None, :].expand(b, c, size, size)
    return images.gather(2, rows).gather(3, cols)


def _samples(templates: torch.Tensor, y: torch.Tensor, grid: int, gen: torch.Generator) -> torch.Tensor:
    """Images ``[N, S, S, C]`` uint8 for labels ``y [N]`` from ``templates [K, C, S, S]``."""
    _, channels, size, _ = templates.shape
    basis = _smooth(torch.eye(grid * grid).reshape(-1, 1, grid, grid), size).reshape(grid * grid, size * size)
    out = torch.empty(len(y), size, size, channels, dtype=torch.uint8)
    for start in range(0, len(y), _CHUNK):
        part = y[start : start + _CHUNK]
        n = len(part)
        template = _shift(templates[part], size // 8, gen)
        smooth = (torch.randn(n * channels, grid * grid, generator=gen) @ basis).reshape(n, channels, size, size)
        img = torch.randn(n, channels, size, size, generator=gen).mul_(PIXEL_NOISE_SCALE)
        brightness = torch.randn(n, 1, 1, 1, generator=gen).mul_(BRIGHTNESS_SCALE).add_(128.0)
        img.add_(smooth, alpha=SMOOTH_NOISE_SCALE).add_(template, alpha=TEMPLATE_SCALE).add_(brightness)
        out[start : start + n] = img.round_().clamp_(0, 255).permute(0, 2, 3, 1)
    return out


def _labels(n: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    return (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]


def make_synthetic(
    num_classes: int = 10,
    image_size: int = 32,
    channels: int = 3,
    train_size: int = 512,
    test_size: int = 256,
    seed: int = 0,
) -> DatasetSplits:
    """Generate the synthetic dataset.

    Args:
        num_classes: ``K`` (>= 1).
        image_size: height and width ``S`` (>= 1).
        channels: ``C`` (>= 1).
        train_size: training images ``N`` (balanced over classes up to one image).
        test_size: test images ``T``.
        seed: the same seed gives the same images, labels and statistics.

    Returns:
        train ``[N, S, S, C]`` and test ``[T, S, S, C]`` uint8, labels in ``0..K-1``; mean/std of the train images.
    """
    for field, value in (("num_classes", num_classes), ("image_size", image_size), ("channels", channels)):
        if value < 1:
            raise DataError(f"synthetic dataset: data.{field} must be at least 1, got {value}")
    for field, value in (("train_size", train_size), ("test_size", test_size)):
        if value < 1:
            raise DataError(f"synthetic dataset: data.{field} must be at least 1, got {value}")
    gen = torch.Generator().manual_seed(seed)
    grid = min(4, image_size)
    templates = _smooth(torch.randn(num_classes, channels, grid, grid, generator=gen), image_size)
    y_train = _labels(train_size, num_classes, gen)
    y_test = _labels(test_size, num_classes, gen)
    train = ImageSet(_samples(templates, y_train, grid, gen), y_train)
    test = ImageSet(_samples(templates, y_test, grid, gen), y_test)
    mean, std = channel_stats(train.x)
    return DatasetSplits(name="synthetic", train=train, test=test, num_classes=num_classes, mean=mean, std=std)


@register_dataset("synthetic", description="seeded class-conditional images of any shape (data.image_size, ...)")
def synthetic(cfg) -> DatasetSplits:
    """:func:`make_synthetic` with ``cfg.num_classes, cfg.image_size, cfg.channels, cfg.train_size,
    cfg.test_size`` and ``cfg.split_seed`` (train ``[train_size, S, S, C]``, test ``[test_size, S, S, C]``)."""
    return make_synthetic(
        num_classes=cfg.num_classes,
        image_size=cfg.image_size,
        channels=cfg.channels,
        train_size=cfg.train_size,
        test_size=cfg.test_size,
        seed=cfg.split_seed,
    )
