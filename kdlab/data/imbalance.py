"""Long-tailed training splits (CIFAR-100-LT and the like) from any dataset, in memory or streamed.

The standard construction of Cao et al., *Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss*,
NeurIPS 2019 (arXiv 1906.07413), as used for CIFAR-10/100-LT: class ``c`` of ``K`` keeps

- ``exp``: ``n_c = floor(n_max * (1 / ratio) ** (c / (K - 1)))`` images, so class 0 keeps ``n_max`` and class ``K-1``
  keeps ``n_max / ratio``;
- ``step``: ``n_max`` for the first ``K // 2`` classes, ``floor(n_max / ratio)`` for the others,

where ``n_max`` is the size of the smallest class of the balanced split (500 on CIFAR-100), so every class can
provide its quota. The kept images of a class are the first ``n_c`` of one seeded permutation
(:func:`kdlab.data.split.class_balanced_subset`'s rule, seeded by ``data.split_seed``), so a run's subset depends on
that seed only and larger quotas keep every image a smaller one chose. The test split is never touched.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import torch
from torch import Tensor

from kdlab.data.base import DataError

log = logging.getLogger(__name__)

PROFILES = ("exp", "step")
"""Imbalance profiles."""


def long_tail_counts(n_max: int, num_classes: int, ratio: float, profile: str = "exp") -> list[int]:
    """Images kept per class.

    Args:
        n_max: images of the largest (first) class.
        num_classes: ``K``.
        ratio: ``n_max / n_min`` (>= 1).
        profile: ``exp`` or ``step`` (module docstring).

    Returns:
        ``K`` counts, non-increasing, each at least 1.
    """
    if not ratio >= 1.0 or not math.isfinite(ratio):
        raise DataError(f"data.imbalance_ratio={ratio} must be a number >= 1 (e.g. 100 for CIFAR-100-LT)")
    if profile not in PROFILES:
        raise DataError(f"data.imbalance_profile={profile!r} must be one of {', '.join(PROFILES)}")
    if num_classes == 1:
        return [n_max]
    if profile == "exp":
        counts = [int(n_max * (1.0 / ratio) ** (c / (num_classes - 1))) for c in range(num_classes)]
    else:
        counts = [n_max if c < num_classes // 2 else int(n_max / ratio) for c in range(num_classes)]
    return [max(1, n) for n in counts]


def long_tail_subset(y: Tensor, num_classes: int, ratio: float, profile: str = "exp", seed: int = 0) -> Tensor:
    """Indices of a long-tailed subset of a training split.

    Args:
        y: ``[N]`` int64 labels in ``0..K-1``; every class must be present.
        num_classes: ``K``.
        ratio: imbalance ratio (``n_max / n_min``).
        profile: ``exp`` or ``step``.
        seed: chooses the images (``data.split_seed``).

    Returns:
        ``[sum_c n_c]`` int64 indices into ``y``, ascending.
    """
    from kdlab.data.split import _labels, _rank_within_class

    labels = _labels(y)
    counts = np.bincount(labels, minlength=num_classes)
    if len(counts) > num_classes:
        raise DataError(f"labels reach {len(counts) - 1} but the dataset has {num_classes} classes")
    if counts.min() == 0:
        raise DataError(
            f"class {int(np.argmin(counts))} has no training images; a long-tailed split needs every class "
            "(apply data.imbalance_ratio to a dataset with all classes present)"
        )
    quota = np.array(long_tail_counts(int(counts.min()), num_classes, ratio, profile), dtype=np.int64)
    keep = np.flatnonzero(_rank_within_class(labels, seed) < quota[labels])
    return torch.from_numpy(keep.astype(np.int64))


def apply_imbalance(splits, ratio: float | None, profile: str = "exp", seed: int = 0):
    """``splits`` with a long-tailed training split (``DatasetSplits`` or ``StreamingSplits``); the test split and
    the normalisation are unchanged. ``ratio=None`` returns ``splits`` itself."""
    if ratio is None:
        return splits
    index = long_tail_subset(splits.train.y, splits.num_classes, ratio, profile, seed)
    train = splits.train.subset(index)
    counts = torch.bincount(train.y, minlength=splits.num_classes).tolist()
    log.info(
        "long-tailed %s training split (data.imbalance_ratio=%g, %s profile, split seed %d): %d images, per class %s",
        splits.name,
        ratio,
        profile,
        seed,
        len(train),
        counts,
    )
    return dataclasses.replace(splits, train=train)


__all__ = ["PROFILES", "apply_imbalance", "long_tail_counts", "long_tail_subset"]
