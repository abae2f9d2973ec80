"""Datasets: held whole in memory as uint8 tensors, or streamed from image files.

A dataset source is a function ``fn(cfg: DataConfig) -> DatasetSplits | StreamingSplits`` registered in
:data:`DATASETS`. In memory (:class:`DatasetSplits`), images are ``[N, H, W, C]`` uint8 (the layout of CIFAR archives
and numpy image arrays); the loader moves them to the training device once and augments whole batches there.
Streamed (:class:`StreamingSplits`, e.g. ImageNet), a split is a list of files decoded and transformed by worker
processes (:mod:`kdlab.data.streaming`). :func:`kdlab.data.make_loader` picks the loader by the kind of splits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdlab.config import ConfigError
from kdlab.registry import Registry
from kdlab.types import DEFAULT_VIEW


class DataError(ValueError):
    """A dataset is missing or malformed; the message says where kdlab looked and how to get the files."""


def default_view_only(views: tuple[str, ...], what: str) -> tuple[str, ...]:
    """``views`` (the view names a method asks the loader for) when they are the default view only; a
    :class:`~kdlab.config.ConfigError` naming the extra views otherwise. ``what`` completes "which ... cannot
    provide", e.g. ``"the token dataset 'criteo'"``: loaders without image augmentation (tokens, segmentation and
    detection files) serve only the default view."""
    extra = [v for v in views if v != DEFAULT_VIEW]
    if extra:
        raise ConfigError(
            f"the method needs view(s) {extra} (extra image augmentations such as MLKD's RandAugment 'strong' view), "
            f"which {what} cannot provide; choose a method without extra views"
        )
    return tuple(views)


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


@dataclass
class FileSet:
    """A split of a dataset streamed from image files (too large to hold in memory).

    Attributes:
        root: folder the paths are relative to.
        paths: ``[N]`` numpy byte strings (dtype ``S``), each a file path relative to ``root``. Byte strings in one
            array, not a list of Python strings, so worker processes share them without copy-on-access.
        y: ``[N]`` int64 labels in ``0..K-1``.
    """

    root: Path
    paths: np.ndarray
    y: Tensor

    def __post_init__(self) -> None:
        self.paths = np.asarray(self.paths, dtype=np.bytes_)
        if self.paths.ndim != 1 or self.y.dim() != 1 or self.y.shape[0] != self.paths.shape[0]:
            raise DataError(
                f"a file split needs [N] paths and [N] labels, got {self.paths.shape} and {tuple(self.y.shape)}"
            )
        self.y = self.y.long()

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def path(self, i: int) -> Path:
        """The absolute path of sample ``i``."""
        return self.root / self.paths[i].decode("utf-8")

    def subset(self, index: Tensor) -> FileSet:
        """The samples at ``index`` (``[M]`` int64)."""
        return FileSet(self.root, self.paths[index.numpy()], self.y[index])


@dataclass
class StreamingSplits:
    """A dataset read from image files batch by batch (:class:`kdlab.data.streaming.StreamingLoader`).

    Same fields as :class:`DatasetSplits` except that splits are :class:`FileSet` and the images have no fixed size
    until the transform crops them to ``crop_size`` (``data.crop_size``).

    Attributes:
        name: registry name.
        train: the training split.
        test: the test (evaluation) split, e.g. ImageNet's ``val`` folder.
        num_classes: ``K``.
        mean: per-channel mean in [0, 1] (the dataset's standard values).
        std: per-channel std.
        crop_size: height and width of the images the loader produces.
        classes: class names (e.g. WordNet ids), if known.
    """

    name: str
    train: FileSet
    test: FileSet
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_size: int = 224
    classes: tuple[str, ...] | None = None

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images the loader produces (RGB, ``crop_size`` square)."""
        return (3, self.crop_size, self.crop_size)


DATASETS: Registry[Callable[..., DatasetSplits | StreamingSplits]] = Registry("dataset")


def register_dataset(name: str, **meta: object) -> Callable:
    """Decorator registering a source ``fn(cfg: DataConfig) -> DatasetSplits``."""
    return DATASETS.register(name, **meta)
