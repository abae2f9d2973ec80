"""Seeded, stratified index utilities: class-balanced subsets and held-out validation splits.

All functions take labels ``y`` as an ``[N]`` integer tensor or array and return ``int64`` index tensors into it,
sorted ascending (dataset order). Randomness comes from numpy's legacy ``RandomState``, whose streams numpy keeps
frozen across versions, so a seed selects the same samples on every machine and every release.

Both functions draw one seeded permutation of all ``N`` positions and walk it class by class, so results are
nested: a larger ``per_class`` (or ``fraction``) keeps every sample a smaller one chose.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from kdlab.data.base import DataError, DatasetSplits


def _labels(y: Tensor | np.ndarray) -> np.ndarray:
    """``y`` as a 1-D int64 numpy array; anything else is a :class:`DataError`."""
    arr = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
    if arr.ndim != 1:
        raise DataError(f"labels must be a 1-D array [N], got shape {tuple(arr.shape)}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _rank_within_class(y: np.ndarray, seed: int) -> np.ndarray:
    """``[N]`` int64: each sample's position among its class in one seeded permutation of ``0..N-1``."""
    n = len(y)
    position = np.empty(n, dtype=np.int64)
    position[np.random.RandomState(seed).permutation(n)] = np.arange(n)
    by_class = np.lexsort((position, y))  # grouped by class, each group in permutation order
    sorted_y = y[by_class]
    group_start = np.searchsorted(sorted_y, sorted_y, side="left")
    ranks = np.empty(n, dtype=np.int64)
    ranks[by_class] = np.arange(n) - group_start
    return ranks


def class_balanced_subset(y: Tensor | np.ndarray, per_class: int, seed: int) -> Tensor:
    """Choose ``per_class`` samples of every class present in ``y``, at random but seeded.

    Args:
        y: ``[N]`` integer labels.
        per_class: samples to keep per class (>= 1); a class with fewer samples is an error.
        seed: selects the samples (keep it fixed across training seeds).

    Returns:
        ``[K' * per_class]`` int64 indices into ``y``, ascending, where ``K'`` is the number of distinct labels.
    """
    labels = _labels(y)
    if per_class < 1:
        raise DataError(f"train_per_class must be at least 1, got {per_class}")
    classes, counts = np.unique(labels, return_counts=True)
    short = [(int(c), int(n)) for c, n in zip(classes, counts) if n < per_class]
    if short:
        listed = ", ".join(f"class {c}: {n}" for c, n in short[:10]) + (" ..." if len(short) > 10 else "")
        raise DataError(
            f"data.train_per_class={per_class} but {len(short)} class(es) have fewer training samples ({listed}); "
            f"lower data.train_per_class to at most {min(n for _, n in short)} or leave it unset"
        )
    keep = np.flatnonzero(_rank_within_class(labels, seed) < per_class)
    return torch.from_numpy(keep.astype(np.int64))


def stratified_split(y: Tensor | np.ndarray, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split positions ``0..N-1`` into disjoint train and validation parts with the class proportions of ``y``.

    The validation part holds ``round(fraction * N)`` samples in total, shared between classes in proportion to
    their sizes (largest remainders get the rounding), with at least one sample of every class when
    ``fraction > 0`` and never a whole class (each class keeps at least one training sample, so a class with a
    single sample stays entirely in train).

    Args:
        y: ``[N]`` integer labels.
        fraction: share of samples held out, in ``[0, 1)``; 0 gives an empty validation index.
        seed: selects the samples (keep it fixed across training seeds).

    Returns:
        ``(train_index [N - M], val_index [M])``, int64, ascending, disjoint, together covering ``0..N-1``.
    """
    labels = _labels(y)
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {fraction}")
    n = len(labels)
    if fraction == 0.0 or n == 0:
        return torch.arange(n, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    spare = round(fraction * n) - int(take.sum())
    if spare > 0:
        by_remainder = np.argsort(-(quota - take), kind="stable")
        take[by_remainder[:spare]] += 1
    take = np.clip(take, 1, np.maximum(counts - 1, 0))
    ranks = _rank_within_class(labels, seed)
    is_val = ranks < take[inverse]
    return (
        torch.from_numpy(np.flatnonzero(~is_val).astype(np.int64)),
        torch.from_numpy(np.flatnonzero(is_val).astype(np.int64)),
    )


def shuffled(index: Tensor, seed: int) -> Tensor:
    """``index`` (``[M]``) in a seeded random order.

    The held-out split is read in this order (by a bilevel method's outer loop, one mini-batch at a time): in dataset
    order, a class-sorted file (the CIFAR-10 JPEG copy sorts every file by class) would give every held-out
    mini-batch the samples of one or two classes.
    """
    g = torch.Generator().manual_seed(int(seed))
    return index[torch.randperm(int(index.shape[0]), generator=g)]


def subset_splits(
    splits: DatasetSplits, train_per_class: int | None = None, test_limit: int | None = None, seed: int = 0
) -> DatasetSplits:
    """Apply ``data.train_per_class`` and ``data.test_limit`` to any dataset.

    Normalisation (``mean``, ``std``) and ``num_classes`` are those of the full dataset and stay unchanged.

    Args:
        splits: the dataset as its source returned it (train ``[N, H, W, C]``, test ``[T, H, W, C]``).
        train_per_class: keep this many training images per class (:func:`class_balanced_subset`), or None.
        test_limit: keep a stratified subset of about this many test images (seeded, in dataset order), or None.
        seed: seed of the class-balanced subset (``data.split_seed``).

    Returns:
        A new :class:`DatasetSplits` with train ``[K * train_per_class, H, W, C]`` and test
        ``[about min(T, test_limit), H, W, C]`` (unchanged where the option is None).
    """
    train, test = splits.train, splits.test
    if train_per_class is not None:
        train = train.subset(class_balanced_subset(train.y, train_per_class, seed))
    if test_limit is not None:
        if test_limit < 1:
            raise DataError(f"data.test_limit must be at least 1 (or null for the whole test set), got {test_limit}")
        if test_limit < len(test):  # a stratified subset: test files are often sorted by class
            _, keep = stratified_split(test.y, test_limit / len(test), seed)
            test = test.subset(keep)
    if train is splits.train and test is splits.test:
        return splits
    return dataclasses.replace(splits, train=train, test=test)


__all__ = ["class_balanced_subset", "shuffled", "stratified_split", "subset_splits"]
