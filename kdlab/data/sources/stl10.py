"""STL-10 (10 classes, 96x96 RGB, 5,000 labelled training and 8,000 test images) from the official binary files.

Layout under ``data.root`` (what the official ``stl10_binary.tar.gz`` extracts to)::

    stl10_binary/train_X.bin  train_y.bin  test_X.bin  test_y.bin  [class_names.txt]

``data.root`` may also be the ``stl10_binary`` folder itself. ``*_X.bin`` holds uint8 images one after another,
each as three 96x96 planes (red, green, blue) stored column-major (the layout of the original Matlab arrays: the
row index varies fastest), so byte ``((n * 3 + c) * 96 + x) * 96 + y`` is pixel ``(y, x)`` of channel ``c`` of image
``n``. ``*_y.bin`` holds one uint8 label per image in ``1..10``, shifted here to ``0..9``. The 100,000 unlabelled
images (``unlabeled_X.bin``) and the predefined folds (``fold_indices.txt``) are not used.

Normalisation: mean and std of the training images.

Reference: Coates, Lee and Ng, *An Analysis of Single-Layer Networks in Unsupervised Feature Learning*,
AISTATS 2011 (https://cs.stanford.edu/~acoates/stl10/).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdlab.data.base import DataError, DatasetSplits, ImageSet, register_dataset
from kdlab.data.sources._common import channel_stats

FOLDER = "stl10_binary"
"""Top-level folder of the official archive."""
SIZE = 96
"""Image side in pixels."""
NUM_CLASSES = 10
"""Number of classes."""
FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
"""The files read."""
LAYOUT = (
    f"expected {FOLDER}/{{{','.join(FILES)}}} under data.root (extract the official stl10_binary.tar.gz there, "
    "https://cs.stanford.edu/~acoates/stl10/)"
)


def find_folder(root: str | Path) -> Path:
    """The ``stl10_binary`` folder: ``root/stl10_binary`` or ``root`` itself."""
    root = Path(root).expanduser().absolute()
    for candidate in (root / FOLDER, root):
        if all((candidate / f).is_file() for f in FILES):
            return candidate
    missing = [f for f in FILES if not (root / FOLDER / f).is_file()]
    raise DataError(f"stl10: missing {', '.join(missing)} in {root / FOLDER}; {LAYOUT}")


def read_images(path: Path) -> np.ndarray:
    """``[N, 96, 96, 3]`` uint8 images of one ``*_X.bin`` file."""
    raw = np.fromfile(path, dtype=np.uint8)
    plane = 3 * SIZE * SIZE
    if raw.size == 0 or raw.size % plane:
        raise DataError(
            f"stl10: {path} holds {raw.size} bytes, not a positive multiple of 3*96*96={plane} (truncated or not an "
            "STL-10 image file)"
        )
    return np.ascontiguousarray(raw.reshape(-1, 3, SIZE, SIZE).transpose(0, 3, 2, 1))


def read_labels(path: Path, count: int) -> np.ndarray:
    """``[count]`` int64 labels ``0..9`` of one ``*_y.bin`` file (stored as ``1..10``)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size != count:
        raise DataError(f"stl10: {path} holds {raw.size} labels but its image file holds {count} images")
    if raw.size and (raw.min() < 1 or raw.max() > NUM_CLASSES):
        raise DataError(f"stl10: {path}: labels must lie in 1..10, found {raw.min()}..{raw.max()}")
    return raw.astype(np.int64) - 1


def load_stl10(root: str | Path) -> DatasetSplits:
    """STL-10: train ``[5000, 96, 96, 3]`` and test ``[8000, 96, 96, 3]`` uint8 (fewer in a partial file set)."""
    folder = find_folder(root)
    x = read_images(folder / "train_X.bin")
    y = read_labels(folder / "train_y.bin", len(x))
    tx = read_images(folder / "test_X.bin")
    ty = read_labels(folder / "test_y.bin", len(tx))
    names = folder / "class_names.txt"
    classes = None
    if names.is_file():
        lines = [line.strip() for line in names.read_text().splitlines() if line.strip()]
        classes = tuple(lines) if len(lines) == NUM_CLASSES else None
    train = ImageSet(torch.from_numpy(x), torch.from_numpy(y))
    mean, std = channel_stats(train.x)
    return DatasetSplits(
        name="stl10",
        train=train,
        test=ImageSet(torch.from_numpy(tx), torch.from_numpy(ty)),
        num_classes=NUM_CLASSES,
        mean=mean,
        std=std,
        classes=classes,
    )


@register_dataset("stl10", description="STL-10: 5k train / 8k test RGB 96x96, 10 classes (binary files)")
def stl10(cfg) -> DatasetSplits:
    """:func:`load_stl10` with ``cfg.root``."""
    return load_stl10(cfg.root)
