"""Image folders streamed from disk: ImageNet (ILSVRC-2012) and any dataset in the same class-folder layout.

Layout under ``data.root``::

    train/<class>/**/<image>       one folder per class (ImageNet: the WordNet id, e.g. n01440764)
    val/<class>/**/<image>         the evaluation split in the same layout (``test/`` is accepted too), or
    val/<image>                    a flat folder plus a label file mapping each image to its class:
                                   LOC_val_solution.csv (Kaggle's ImageNet: ``ImageId,PredictionString`` with the
                                   class as the first word of the prediction string) or val_labels.txt (one
                                   ``<file name> <class>`` per line), in ``data.root`` or in ``val/``

The class index is the position of the class folder name in sorted order (torchvision ``ImageFolder``'s rule, so
class ``k`` means the same in kdlab, torchvision and every checkpoint trained with them). Files are taken in sorted
order, recursively, with the extensions of :data:`IMAGE_EXTENSIONS` (case-insensitive). Images are decoded with
Pillow and converted to RGB by the streaming loader (:mod:`kdlab.data.streaming`); nothing is decoded here.

Normalisation: the standard ImageNet statistics (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225) for both
datasets; computing a folder's own statistics would need a pass over every image.

Reference: Russakovsky et al., *ImageNet Large Scale Visual Recognition Challenge*, IJCV 2015 (arXiv 1409.0575).
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import torch

from kdlab.data.base import DataError, FileSet, StreamingSplits, register_dataset
from kdlab.paths import why_unusable

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File extensions read as images (lower case; matching is case-insensitive)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Standard per-channel mean of ImageNet (RGB, [0, 1])."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Standard per-channel std of ImageNet."""
VAL_LABEL_FILES = ("LOC_val_solution.csv", "val_labels.txt")
"""Label files of a flat evaluation folder, looked up in ``data.root`` and in the evaluation folder."""

LAYOUT = (
    "expected layout under data.root: train/<class>/<image> and val/<class>/<image> (one folder per class, e.g. "
    "ImageNet's WordNet ids n01440764/...), or a flat val/<image> folder with LOC_val_solution.csv or "
    "val_labels.txt ('<file name> <class>' per line) in data.root or val/"
)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(root: Path, rel: str) -> list[str]:
    """Image files under ``root/rel``, recursively, as paths relative to ``root`` (``/``-separated), in sorted order:
    a folder's files first, then its subfolders in sorted order (torchvision's sorted ``os.walk``)."""
    found = []
    top = str(root / rel)
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        dirnames.sort()
        sub = os.path.relpath(dirpath, top)
        prefix = rel if sub == "." else f"{rel}/{Path(sub).as_posix()}"
        found.extend(f"{prefix}/{f}" for f in sorted(filenames) if _is_image(f))
    return found


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def scan_class_folders(
    root: Path, split: str, classes: list[str] | None = None, what: str = "imagefolder"
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read the class-folder layout ``root/split/<class>/**/<image>``.

    Args:
        root: ``data.root``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        classes: the class list to index by (the training split's); None to take this split's sorted folders.
        what: dataset name for messages.

    Returns:
        ``(classes, paths, labels)``: sorted class names, ``[N]`` byte-string paths relative to ``root`` and ``[N]``
        int64 labels (index into ``classes``), grouped by class in class order.
    """
    folder = root / split
    names = _class_folders(folder)
    if not names:
        raise DataError(f"{what}: {folder} has no class folders; {LAYOUT}")
    if classes is None:
        classes = names
    else:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            listed = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise DataError(
                f"{what}: {folder} has class folder(s) that train/ lacks ({listed}); every evaluation class must be "
                f"a training class. {LAYOUT}"
            )
    index = {c: i for i, c in enumerate(classes)}
    paths: list[bytes] = []
    labels: list[int] = []
    empty = []
    for name in names:
        files = _images_under(root, f"{split}/{name}")
        if not files:
            empty.append(name)
        paths.extend(f.encode("utf-8") for f in files)
        labels.extend([index[name]] * len(files))
    if empty:
        listed = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise DataError(
            f"{what}: class folder(s) without images in {folder}: {listed} (extensions read: "
            f"{', '.join(IMAGE_EXTENSIONS)}); {LAYOUT}"
        )
    return classes, np.array(paths, dtype=np.bytes_), np.array(labels, dtype=np.int64)


def read_label_file(path: Path) -> dict[str, str]:
    """``{image file stem: class name}`` from ``LOC_val_solution.csv`` or a ``<file> <class>`` text file."""
    mapping: dict[str, str] = {}
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
                    raise DataError(
                        f"{path}: expected a header 'ImageId,PredictionString' (Kaggle's LOC_val_solution.csv), "
                        f"found {header}"
                    )
                for row in reader:
                    if len(row) < 2 or not row[1].split():
                        raise DataError(f"{path}: line {reader.line_num} has no class: {row}")
                    mapping[Path(row[0].strip()).stem] = row[1].split()[0]
        else:
            for number, line in enumerate(path.read_text().splitlines(), 1):
                parts = line.replace(",", " ").split()
                if not parts:
                    continue
                if len(parts) < 2:
                    raise DataError(f"{path}: line {number} should be '<file name> <class>', found {line!r}")
                mapping[Path(parts[0]).stem] = parts[1]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path} could not be read ({err})") from None
    return mapping


def scan_flat_split(root: Path, split: str, classes: list[str], what: str) -> tuple[np.ndarray, np.ndarray]:
    """A flat evaluation folder ``root/split/<image>`` labelled by one of :data:`VAL_LABEL_FILES`.

    Returns:
        ``[N]`` byte-string paths relative to ``root`` (sorted by file name) and ``[N]`` int64 labels.
    """
    folder = root / split
    label_file = next((d / n for n in VAL_LABEL_FILES for d in (root, folder) if (d / n).is_file()), None)
    if label_file is None:
        raise DataError(
            f"{what}: {folder} holds images but no class folders, and no label file "
            f"({' or '.join(VAL_LABEL_FILES)}) was found in {root} or {folder}; {LAYOUT}"
        )
    mapping = read_label_file(label_file)
    index = {c: i for i, c in enumerate(classes)}
    files = sorted(f for f in os.listdir(folder) if _is_image(f))
    missing = [f for f in files if Path(f).stem not in mapping]
    if missing:
        raise DataError(
            f"{what}: {label_file} has no class for {len(missing)} image(s) of {folder}, e.g. {missing[0]}; "
            "give every image a line"
        )
    unknown = sorted({mapping[Path(f).stem] for f in files} - set(index))
    if unknown:
        raise DataError(
            f"{what}: {label_file} names class(es) without a training folder: {', '.join(unknown[:5])}; "
            "the class names must be the train/ folder names"
        )
    paths = np.array([f"{split}/{f}".encode() for f in files], dtype=np.bytes_)
    labels = np.array([index[mapping[Path(f).stem]] for f in files], dtype=np.int64)
    return paths, labels


def load_image_folder(root: str | Path, name: str, crop_size: int, eval_splits: tuple[str, ...]) -> StreamingSplits:
    """Read the layout of the module docstring (no image is decoded).

    Args:
        root: ``data.root``.
        name: dataset name (``imagenet`` or ``imagefolder``).
        crop_size: ``data.crop_size``, the side of the images the loader produces.
        eval_splits: folder names tried for the evaluation split, in order (``("val",)`` or ``("val", "test")``).

    Returns:
        Train and test :class:`FileSet` lists with labels in ``0..K-1`` (``K`` = number of train class folders).
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"{name}: data.root={root} is not a folder; {LAYOUT}")
    if not (root / "train").is_dir():
        raise DataError(f"{name}: {root / 'train'} {why_unusable(root / 'train', 'folder')}; {LAYOUT}")
    classes, train_paths, train_y = scan_class_folders(root, "train", what=name)
    split = next((s for s in eval_splits if (root / s).is_dir()), None)
    if split is None:
        tried = " or ".join(str(root / s) for s in eval_splits)
        raise DataError(f"{name}: no evaluation folder ({tried}); {LAYOUT}")
    if _class_folders(root / split):
        _, test_paths, test_y = scan_class_folders(root, split, classes, what=name)
    else:
        test_paths, test_y = scan_flat_split(root, split, classes, name)
    if len(test_y) == 0:
        raise DataError(f"{name}: {root / split} holds no images; {LAYOUT}")
    log.info(
        "%s: %d classes, %d training and %d %s images under %s",
        name,
        len(classes),
        len(train_y),
        len(test_y),
        split,
        root,
    )
    return StreamingSplits(
        name=name,
        train=FileSet(root, train_paths, torch.from_numpy(train_y)),
        test=FileSet(root, test_paths, torch.from_numpy(test_y)),
        num_classes=len(classes),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        crop_size=crop_size,
        classes=tuple(classes),
    )


@register_dataset(
    "imagenet", streaming=True, description="ImageNet-1k class folders (train/, val/) streamed from JPEGs"
)
def imagenet(cfg) -> StreamingSplits:
    """ImageNet under ``cfg.root`` (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG`` or a flat ``val/`` with labels)."""
    splits = load_image_folder(cfg.root, "imagenet", cfg.crop_size, ("val",))
    if splits.num_classes != 1000:
        log.warning("imagenet: %d class folders under %s (ImageNet-1k has 1000)", splits.num_classes, cfg.root)
    return splits


@register_dataset(
    "imagefolder", streaming=True, description="any class-folder image dataset (train/, val/ or test/), streamed"
)
def imagefolder(cfg) -> StreamingSplits:
    """Class folders under ``cfg.root`` (``train/<class>/...``, ``val/`` or ``test/``); ImageNet statistics."""
    return load_image_folder(cfg.root, "imagefolder", cfg.crop_size, ("val", "test"))
