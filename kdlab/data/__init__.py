"""Data: datasets held whole as uint8 tensors on the training device, augmented batch-wise there."""

from __future__ import annotations

import importlib
import pkgutil

from kdlab.data.base import DATASETS, DataError, DatasetSplits, ImageSet, register_dataset


def _load_sources() -> None:
    from kdlab.data import sources

    for info in pkgutil.iter_modules(sources.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{sources.__name__}.{info.name}")


def load_dataset(cfg) -> DatasetSplits:
    """Load the dataset named by ``cfg.name`` (a :class:`kdlab.config.DataConfig`).

    ``cfg.train_per_class`` and ``cfg.test_limit`` are applied here, for every source
    (:func:`kdlab.data.split.subset_splits`, seeded by ``cfg.split_seed``).
    """
    from kdlab.data.split import subset_splits

    _load_sources()
    splits = DATASETS.get(cfg.name)(cfg)
    return subset_splits(splits, cfg.train_per_class, cfg.test_limit, cfg.split_seed)


def dataset_names() -> list[str]:
    """All registered dataset names."""
    _load_sources()
    return DATASETS.names()


__all__ = ["DATASETS", "DataError", "DatasetSplits", "ImageSet", "dataset_names", "load_dataset", "register_dataset"]
