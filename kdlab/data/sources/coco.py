"""COCO 2017 instances for object detection: 80 classes, box mAP by the official evaluation (pycocotools).

Layout under ``data.root`` (the official ``annotations_trainval2017.zip``, ``train2017.zip`` and ``val2017.zip``
unpacked side by side)::

    annotations/instances_train2017.json
    annotations/instances_val2017.json
    train2017/<file_name>
    val2017/<file_name>

Both files are read with pycocotools' ``COCO`` API (the ``detection`` extra: ``pip install kdlab[detection]``;
imported only by this source and the ``map`` metric). ``train2017`` is the training split, ``val2017`` the
evaluation split. Any COCO-format set with these names works (the tests build a tiny one).

Rules (every one also in the run record's ``data`` section where it counts something):

- **Labels**: the categories of the annotation file sorted by id get the contiguous labels ``0..K-1``
  (``category_ids[k]`` is label ``k``'s COCO id: 1..90 with gaps for COCO). Both files must list the same categories.
- **Crowd boxes** (``iscrowd: 1``) stay in the ground truth ``batch.y`` with their flag, so the evaluation ignores
  detections matched to them as the official protocol does; their training label is -1, so they never train.
- **Boxes** are ``bbox = [x, y, w, h]`` clipped to the image (torchvision's reference ``ConvertCocoPolysToMask``);
  a box whose width or height is not positive (before or after the clipping) is dropped and counted
  (``dropped_boxes`` per split, logged as a warning). The official evaluation would keep such a box in val; COCO
  2017 val has none.
- **Images without usable boxes**: a training image with no non-crowd box left is dropped (nothing to learn from;
  torchvision's detection reference also drops training images without annotations), counted as
  ``train_images_without_boxes``; evaluation images are all kept (an image without boxes still scores its false
  positives, as in the official evaluation).
- **A category id not in ``categories``**: a :class:`~kdlab.data.base.DataError` naming the file, the annotation id
  and the category, and the fix (exit 2, nothing written).
- **A missing image file**: a DataError naming the path (checked for every image when the run is built, before
  anything is written). An image whose decoded size differs from the file's ``height``/``width`` is refused when it
  is read, naming the file.
- ``data.test_limit`` evaluates a seeded random subset (``data.split_seed``) of that many val images in id order;
  ``data.train_per_class`` and ``data.imbalance_ratio`` (one class per image) are refused.

Reference: T.-Y. Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014, arXiv:1405.0312; the
evaluation: github.com/cocodataset/cocoapi (``PythonAPI/pycocotools``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from kdlab.config import ConfigError
from kdlab.data.base import DataError, register_dataset
from kdlab.data.detection import BoxSet, DetectionSplits, check_sizes
from kdlab.data.sources.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from kdlab.paths import why_unusable

log = logging.getLogger(__name__)

LAYOUT = (
    "expected under data.root: annotations/instances_train2017.json, annotations/instances_val2017.json, "
    "train2017/ and val2017/ (the official COCO 2017 archives unpacked side by side)"
)


def pycocotools_coco():
    """pycocotools' ``COCO`` class, or a :class:`DataError` saying how to install it."""
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise DataError(
            "COCO data and the map metric need pycocotools: pip install pycocotools (or kdlab[detection])"
        ) from None
    return COCO


def load_coco(path: Path):
    """A pycocotools ``COCO`` object of annotation file ``path`` (its progress prints silenced).

    Raises:
        DataError: the file is missing, not JSON, or not a COCO instances file.
    """
    problem = why_unusable(path)
    if problem:
        raise DataError(f"coco: the annotation file {path} {problem}; {LAYOUT}")
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"coco: could not read {path} as JSON ({err}); re-download the annotations") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise DataError(f"coco: {path} has no {missing} list(s); it is not a COCO instances file. {LAYOUT}")
    coco = pycocotools_coco()()
    coco.dataset = payload
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _categories(coco, path: Path) -> tuple[list[int], list[str]]:
    cats = sorted(coco.dataset["categories"], key=lambda c: int(c["id"]))
    if not cats:
        raise DataError(f"coco: {path} lists no categories; {LAYOUT}")
    return [int(c["id"]) for c in cats], [str(c.get("name", c["id"])) for c in cats]


def _boxset(coco, path: Path, folder: Path, root: Path, label_of: dict[int, int], train: bool) -> tuple:
    """The split of one annotation file: ``(BoxSet, dropped boxes, dropped images)`` (vectorised over the
    annotations: COCO's train file has 860k)."""
    anns = coco.dataset["annotations"]  # the whole file, also annotations of images it does not list
    m = len(anns)
    try:
        cats = np.fromiter((int(a["category_id"]) for a in anns), dtype=np.int64, count=m)
        ann_image = np.fromiter((int(a["image_id"]) for a in anns), dtype=np.int64, count=m)
        bbox = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(m, 4)
        crowd = np.fromiter((bool(a.get("iscrowd", 0)) for a in anns), dtype=np.uint8, count=m)
        area = np.fromiter((float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns), np.float64, count=m)
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"coco: {path}: an annotation lacks a numeric image_id, category_id or 4-number bbox ({err!r}); "
            "re-download or repair the annotation file"
        ) from None
    bad = np.flatnonzero(~np.isin(cats, np.array(sorted(label_of), dtype=np.int64)))
    if bad.size:
        ann = anns[int(bad[0])]
        raise DataError(
            f"coco: {path}: annotation id {ann.get('id')} (image {ann.get('image_id')}) has category_id "
            f"{ann['category_id']}, which is not in the file's 'categories' (ids {sorted(label_of)}); add the "
            "category to 'categories' or remove the annotation"
        )
    ids = np.array(sorted(coco.imgs), dtype=np.int64)
    n = ids.shape[0]
    infos = [coco.imgs[int(i)] for i in ids]
    hw = np.array([(int(i["height"]), int(i["width"])) for i in infos], dtype=np.int64).reshape(n, 2)
    pos = np.searchsorted(ids, ann_image)
    listed = (pos < n) & (ids[np.minimum(pos, max(n - 1, 0))] == ann_image) if n else np.zeros(m, dtype=bool)
    order = np.flatnonzero(listed)
    order = order[np.argsort(pos[order], kind="stable")]  # by image, file order within an image
    img = pos[order]
    x, y, bw, bh = bbox[order].T
    h, w = hw[img, 0], hw[img, 1]
    x1, y1 = np.minimum(np.maximum(x, 0.0), w), np.minimum(np.maximum(y, 0.0), h)
    x2, y2 = np.minimum(np.maximum(x + bw, 0.0), w), np.minimum(np.maximum(y + bh, 0.0), h)
    valid = (bw > 0) & (bh > 0) & (x2 > x1) & (y2 > y1)  # clipped to the image as torchvision's reference
    dropped_boxes = int((~valid).sum())
    order, img = order[valid], img[valid]
    boxes = np.stack([x1, y1, x2, y2], axis=1)[valid]
    usable = np.bincount(img, weights=1.0 - crowd[order], minlength=n)
    keep = usable > 0 if train else np.ones(n, dtype=bool)  # a training image needs a non-crowd box
    dropped_images = int((~keep).sum())
    rows = keep[img]
    order, img, boxes = order[rows], img[rows], boxes[rows]
    kept = np.flatnonzero(keep)
    images = []
    for i in kept:
        name = f"{folder.name}/{infos[i]['file_name']}"
        if not os.path.isfile(os.path.join(root, name)):
            raise DataError(
                f"coco: image {root / name} (id {int(ids[i])}, listed in {path}) is missing; restore the file or "
                f"remove the image and its annotations from the annotation file. {LAYOUT}"
            )
        images.append(name)
    if not images:
        raise DataError(f"coco: {path} gives no usable image; {LAYOUT}")
    counts = np.bincount(np.searchsorted(kept, img), minlength=kept.shape[0])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    labels = np.searchsorted(np.array(sorted(label_of), dtype=np.int64), cats[order])  # label = rank of the id
    boxset = BoxSet(
        root, np.array(images, dtype=np.bytes_), ids[kept], hw[kept], offsets, boxes, labels, crowd[order], area[order]
    )
    return boxset, dropped_boxes, dropped_images


@register_dataset("coco", detection=True, description="COCO 2017 instances, 80 classes (detection, box mAP)")
def coco(cfg) -> DetectionSplits:
    """COCO ``train2017`` / ``val2017`` under ``data.root`` (see the module docstring)."""
    for key, value in (("train_per_class", cfg.train_per_class), ("imbalance_ratio", cfg.imbalance_ratio)):
        if value is not None:
            raise ConfigError(
                f"data.{key}={value} subsets a classification set by class; a detection image has many classes: "
                f"remove data.{key} (data.test_limit works)"
            )
    min_size, max_size = check_sizes(cfg)
    root = Path(cfg.root).expanduser()
    problem = why_unusable(root, "folder")
    if problem:
        raise DataError(f"coco: data.root={cfg.root!r} {problem}; {LAYOUT}")
    paths = {s: root / "annotations" / f"instances_{s}2017.json" for s in ("train", "val")}
    files = {s: load_coco(p) for s, p in paths.items()}
    cat_ids, names = _categories(files["train"], paths["train"])
    val_ids, _ = _categories(files["val"], paths["val"])
    if val_ids != cat_ids:
        raise DataError(
            f"coco: {paths['train']} and {paths['val']} list different categories (ids {cat_ids[:10]}... and "
            f"{val_ids[:10]}...); both splits need the same category list"
        )
    label_of = {c: k for k, c in enumerate(cat_ids)}
    train, train_dropped, empty = _boxset(files["train"], paths["train"], root / "train2017", root, label_of, True)
    test, val_dropped, _ = _boxset(files["val"], paths["val"], root / "val2017", root, label_of, False)
    if train_dropped or val_dropped:
        log.warning(
            "coco: dropped %d train and %d val box(es) with non-positive width or height (after clipping to the image)",
            train_dropped,
            val_dropped,
        )
    if empty:
        log.info("coco: %d training image(s) without a usable (non-crowd) box left out", empty)
    if cfg.test_limit is not None and cfg.test_limit < len(test):
        g = torch.Generator().manual_seed(cfg.split_seed)
        test = test.subset(torch.randperm(len(test), generator=g)[: cfg.test_limit].sort().values)
    return DetectionSplits(
        name="coco",
        train=train,
        test=test,
        num_classes=len(cat_ids),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        min_size=min_size,
        max_size=max_size,
        classes=tuple(names),
        category_ids=tuple(cat_ids),
        record={
            "dropped_boxes": {"train": train_dropped, "val": val_dropped},
            "train_images_without_boxes": empty,
            "category_ids": list(cat_ids),
        },
    )
