"""Pascal VOC 2012 for semantic segmentation: 21 classes (background + 20 objects), boundaries ignored (255).

Layout under ``data.root`` (``VOCdevkit/VOC2012`` of the official archive)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png          palette PNGs: 0..20, 255 on object boundaries
    ImageSets/Segmentation/{train,val}.txt

With ``data.voc_augmented: true`` the training split is the SBD-augmented list (10,582 images, as CIRKD's
``train_aug.txt``): ``ImageSets/Segmentation/train_aug.txt`` with label maps from ``SegmentationClassAug/<id>.png``
(one-channel PNGs of the same values). ``val`` (1,449 images) is the evaluation split. No pair recipes have published
targets here; ``configs/voc/`` mirrors the Cityscapes pairs.

Reference: M. Everingham et al., "The PASCAL Visual Object Classes Challenge", IJCV 2010; B. Hariharan et al.,
"Semantic Contours from Inverse Detectors", ICCV 2011 (SBD).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdlab.data.base import DataError, register_dataset
from kdlab.data.dense import DenseSplits, PairSet, crop_hw, lookup_table, scale_pair
from kdlab.data.sources.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from kdlab.paths import why_unusable

CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
LAYOUT = (
    "expected under data.root (VOCdevkit/VOC2012): JPEGImages/<id>.jpg, SegmentationClass/<id>.png and "
    "ImageSets/Segmentation/{train,val}.txt (with data.voc_augmented: SegmentationClassAug/<id>.png and "
    "ImageSets/Segmentation/train_aug.txt)"
)


def _pairs(root: Path, list_name: str, label_folder: str) -> PairSet:
    listing = root / "ImageSets" / "Segmentation" / list_name
    problem = why_unusable(listing)
    if problem:
        raise DataError(f"voc: the split list {listing} {problem}; {LAYOUT}")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"voc: the split list {listing} names no image")
    images, labels = [], []
    for i in ids:
        image, label = f"JPEGImages/{i}.jpg", f"{label_folder}/{i}.png"
        for rel, what in ((image, "image"), (label, "label map")):
            if not (root / rel).is_file():
                raise DataError(f"voc: the {what} {root / rel} of '{i}' (listed in {listing}) is missing; {LAYOUT}")
        images.append(image)
        labels.append(label)
    return PairSet(root, np.array(images, dtype=np.bytes_), np.array(labels, dtype=np.bytes_))


@register_dataset("voc", dense=True, description="Pascal VOC 2012, 21 classes (segmentation, mIoU)")
def voc(cfg) -> DenseSplits:
    """VOC 2012 ``train`` (or SBD-augmented ``train_aug``) / ``val`` pairs under ``data.root``."""
    root = Path(cfg.root).expanduser()
    problem = why_unusable(root, "folder")
    if problem:
        raise DataError(f"voc: data.root={cfg.root!r} {problem}; {LAYOUT}")
    augmented = bool(getattr(cfg, "voc_augmented", False))
    train = _pairs(root, "train_aug.txt", "SegmentationClassAug") if augmented else None
    return DenseSplits(
        name="voc",
        train=train or _pairs(root, "train.txt", "SegmentationClass"),
        test=_pairs(root, "val.txt", "SegmentationClass"),
        num_classes=len(CLASSES),
        label_map=lookup_table({i: i for i in range(len(CLASSES))}),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        crop_size=crop_hw(cfg),
        scale_range=scale_pair(cfg),
        classes=CLASSES,
    )
