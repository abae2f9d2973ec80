"""Data: small datasets held whole as uint8 tensors on the training device and augmented batch-wise there; large
ones (ImageNet) streamed from image files by worker processes."""

from __future__ import annotations

import importlib
import pkgutil

from kdlab.data.base import (
    DATASETS,
    DataError,
    DatasetSplits,
    FileSet,
    ImageSet,
    StreamingSplits,
    register_dataset,
)


def _load_sources() -> None:
    from kdlab.data import sources

    for info in pkgutil.iter_modules(sources.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{sources.__name__}.{info.name}")


def load_dataset(cfg) -> DatasetSplits:
    """Load the dataset named by ``cfg.name`` (a :class:`kdlab.config.DataConfig`).

    ``cfg.train_per_class``, ``cfg.test_limit`` and then ``cfg.imbalance_ratio`` are applied here, for every source
    (:func:`kdlab.data.split.subset_splits`, :func:`kdlab.data.imbalance.apply_imbalance`, seeded by
    ``cfg.split_seed``). Returns :class:`DatasetSplits` (in memory) or :class:`StreamingSplits` (image files).
    """
    from kdlab.data.imbalance import apply_imbalance
    from kdlab.data.split import subset_splits

    _load_sources()
    if not isinstance(cfg.crop_size, int) and not DATASETS.meta(cfg.name).get("dense", False):
        from kdlab.config import ConfigError

        raise ConfigError(
            f"data.crop_size={cfg.crop_size!r}: a [height, width] crop is for segmentation datasets (cityscapes, voc); "
            f"dataset {cfg.name!r} takes one side in pixels"
        )
    splits = DATASETS.get(cfg.name)(cfg)
    splits = subset_splits(splits, cfg.train_per_class, cfg.test_limit, cfg.split_seed)
    return apply_imbalance(splits, cfg.imbalance_ratio, cfg.imbalance_profile, cfg.split_seed)


def is_streaming(name: str) -> bool:
    """Whether dataset ``name`` is streamed from files (registered with ``streaming=True``) rather than held in
    memory; known without reading any data."""
    _load_sources()
    return bool(DATASETS.meta(name).get("streaming", False))


def make_loader(splits, cfg, device, seed: int, **kwargs):
    """The loader of a dataset: :class:`~kdlab.data.loader.DeviceLoader` for in-memory :class:`DatasetSplits`,
    :class:`~kdlab.data.dense.DenseLoader` for segmentation pairs (:class:`~kdlab.data.dense.DenseSplits`),
    :class:`~kdlab.data.detection.DetectionLoader` for images with boxes (``DetectionSplits``),
    :class:`~kdlab.data.streaming.StreamingLoader` for :class:`StreamingSplits`, :class:`~kdlab.data.tokens.TokenLoader`
    for token data (:class:`~kdlab.data.tokens.TokenSplits`). ``kwargs`` go to the loader
    (``views``, ``holdout_fraction``, and ``rank``/``world_size`` where the loader shards)."""
    if not isinstance(splits, (DatasetSplits, StreamingSplits)):  # token or segmentation data
        from kdlab.data.augment_pipeline import refuse_for_non_images

        refuse_for_non_images(cfg, "not an image classification dataset")
    from kdlab.data.dense import DenseSplits
    from kdlab.data.detection import DetectionSplits
    from kdlab.data.tokens import TokenSplits

    if isinstance(splits, DetectionSplits):
        from kdlab.data.detection import DetectionLoader

        return DetectionLoader(splits, cfg, device, seed, **kwargs)
    if isinstance(splits, DenseSplits):
        from kdlab.data.dense import DenseLoader

        return DenseLoader(splits, cfg, device, seed, **kwargs)
    if isinstance(splits, TokenSplits):
        from kdlab.data.tokens import TokenLoader

        return TokenLoader(splits, cfg, device, seed, **kwargs)
    if isinstance(splits, StreamingSplits):
        from kdlab.data.streaming import StreamingLoader

        return StreamingLoader(splits, cfg, device, seed, **kwargs)
    from kdlab.data.loader import DeviceLoader

    return DeviceLoader(splits, cfg, device, seed, **kwargs)


def dataset_names() -> list[str]:
    """All registered dataset names."""
    _load_sources()
    return DATASETS.names()


__all__ = [
    "DATASETS",
    "DataError",
    "DatasetSplits",
    "FileSet",
    "ImageSet",
    "StreamingSplits",
    "dataset_names",
    "is_streaming",
    "load_dataset",
    "make_loader",
    "register_dataset",
]
