"""Cityscapes (fine annotations) for semantic segmentation: 19 train ids, everything else ignored (255).

Layout under ``data.root`` (the official ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` unpacked
side by side)::

    leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
    gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png

``train`` is the training split and ``val`` the evaluation split (the test split has no public labels). Every image
needs its ``labelIds`` map; the raw label ids are mapped to the 19 train ids of the official ``labels.py``
(cityscapesScripts), the others (void, license plate, ...) to 255, as the CIRKD / DIST_KD ``CSTrainValSet``.
Defaults: crop ``[512, 1024]`` (``data.crop_size``), scales 0.5-2.0, ImageNet RGB statistics.

Reference: M. Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR 2016,
arXiv:1604.01685.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdlab.data.base import DataError, register_dataset
from kdlab.data.dense import DenseSplits, PairSet, crop_hw, lookup_table, scale_pair
from kdlab.data.sources.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from kdlab.paths import why_unusable

#: Raw label id -> train id (cityscapesScripts ``labels.py``; ids not listed are ignored).
TRAIN_IDS: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
#: Raw ids that exist in the label files but are not trained on (void classes, 0..33 minus the above).
IGNORED_IDS = tuple(i for i in range(34) if i not in TRAIN_IDS)
CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
LAYOUT = (
    "expected under data.root: leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
    "gtFine/{train,val}/<city>/*_gtFine_labelIds.png (the official leftImg8bit and gtFine archives unpacked)"
)


def label_table() -> np.ndarray:
    """The ``[256]`` lookup of Cityscapes raw ids (0..33, and 255 in some tools' exports) to train ids."""
    return lookup_table({**TRAIN_IDS, **{i: 255 for i in IGNORED_IDS}})


def _pairs(root: Path, split: str) -> PairSet:
    folder = root / "leftImg8bit" / split
    if not folder.is_dir():
        raise DataError(f"cityscapes: {folder} is not a folder; {LAYOUT}")
    images, labels = [], []
    for path in sorted(folder.rglob("*_leftImg8bit.png")):
        rel = path.relative_to(root).as_posix()
        label = rel.replace("leftImg8bit/", "gtFine/", 1).replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        if not (root / label).is_file():
            raise DataError(f"cityscapes: image {path} has no label map {root / label}; {LAYOUT}")
        images.append(rel)
        labels.append(label)
    if not images:
        raise DataError(f"cityscapes: no *_leftImg8bit.png under {folder}; {LAYOUT}")
    return PairSet(root, np.array(images, dtype=np.bytes_), np.array(labels, dtype=np.bytes_))


@register_dataset("cityscapes", dense=True, description="Cityscapes fine, 19 classes (segmentation, mIoU)")
def cityscapes(cfg) -> DenseSplits:
    """Cityscapes ``train`` / ``val`` pairs under ``data.root`` (see the module docstring)."""
    root = Path(cfg.root).expanduser()
    problem = why_unusable(root, "folder")
    if problem:
        raise DataError(f"cityscapes: data.root={cfg.root!r} {problem}; {LAYOUT}")
    return DenseSplits(
        name="cityscapes",
        train=_pairs(root, "train"),
        test=_pairs(root, "val"),
        num_classes=len(CLASSES),
        label_map=label_table(),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        crop_size=crop_hw(cfg),
        scale_range=scale_pair(cfg),
        classes=CLASSES,
    )
