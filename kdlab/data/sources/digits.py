"""scikit-learn's bundled 8x8 handwritten digits as 1-channel images: the embedded default, no download.

1,797 images of the digits 0..9 (UCI "Optical Recognition of Handwritten Digits", test part), values 0..16
scaled to 0..255. The train/test split is fixed (stratified, :data:`SPLIT_SEED`), independent of ``data.split_seed``
and of the training seed, so every run of every config sees the same 1,297 training and 500 test images.
"""

from __future__ import annotations

import numpy as np
import torch

from kdlab.data.base import DatasetSplits, ImageSet, register_dataset
from kdlab.data.sources._common import channel_stats
from kdlab.data.split import stratified_split

TEST_SIZE = 500
"""Images in the fixed test split (the other 1,297 are the training split)."""
SPLIT_SEED = 0
"""Seed of the fixed train/test split."""


def load_digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: images ``[1797, 8, 8, 1]`` uint8 (0..255) and labels ``[1797]`` int64, in sklearn's order."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return torch.from_numpy(images[..., None].copy()), torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))


@register_dataset("digits", description="scikit-learn 8x8 digits, 1 channel, 10 classes, fixed 1,297/500 split")
def digits(cfg) -> DatasetSplits:
    """The digits with the fixed stratified split: train ``[1297, 8, 8, 1]``, test ``[500, 8, 8, 1]`` uint8.

    ``cfg`` is not consulted (subsetting is applied generically by :func:`kdlab.data.load_dataset`); mean and std
    are computed from the training split.
    """
    x, y = load_digits_images()
    train_index, test_index = stratified_split(y, TEST_SIZE / len(y), SPLIT_SEED)
    train = ImageSet(x[train_index], y[train_index])
    mean, std = channel_stats(train.x)
    return DatasetSplits(
        name="digits",
        train=train,
        test=ImageSet(x[test_index], y[test_index]),
        num_classes=10,
        mean=mean,
        std=std,
        classes=tuple(str(d) for d in range(10)),
    )
