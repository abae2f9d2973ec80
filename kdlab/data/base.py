"""Datasets held whole in memory as uint8 tensors.

A dataset source is a function ``fn(cfg: DataConfig) -> DatasetSplits`` registered in :data:`DATASETS`.
Images are ``[N, H, W, C]`` uint8 (the layout of CIFAR archives and numpy image arrays); the loader moves them
to the training device once and augments whole batches there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from kdlab.registry import Registry


class DataError(ValueError):
    """A dataset is missing or malformed; the message says where kdlab looked and how to get the files."""


@dataclass
class ImageSet:
    """A split of a dataset.

    Attributes:
        x: ``[N, H, W, C]`` uint8 images.
        y: ``[N]`` int64 labels in ``0..K-1``.
    """

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise DataError(f"images must be uint8 [N, H, W, C], got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dim() != 1 or self.y.shape[0] != self.x.shape[0]:
            raise DataError(f"labels must be [N] with N={self.x.shape[0]}, got {tuple(self.y.shape)}")
        self.y = self.y.long()

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: Tensor) -> ImageSet:
        """The samples at ``index`` (``[M]`` int64)."""
        return ImageSet(self.x[index], self.y[index])


@dataclass
class DatasetSplits:
    """A dataset: train and test splits plus its normalisation.

    Attributes:
        name: registry name.
        train: the training split.
        test: the test split.
        num_classes: ``K``.
        mean: per-channel mean of the training images in [0, 1] (the dataset's standard values).
        std: per-channel std (standard values).
        classes: class names, if known.
    """

    name: str
    train: ImageSet
    test: ImageSet
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] | None = None

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images."""
        _, h, w, c = self.train.x.shape
        return (int(c), int(h), int(w))


DATASETS: Registry[Callable[..., DatasetSplits]] = Registry("dataset")


def register_dataset(name: str, **meta: object) -> Callable:
    """Decorator registering a source ``fn(cfg: DataConfig) -> DatasetSplits``."""
    return DATASETS.register(name, **meta)
