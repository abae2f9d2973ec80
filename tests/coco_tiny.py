"""A tiny COCO-format detection set for tests: coloured rectangles on noise, official json keys.

``make_coco(root)`` writes ``annotations/instances_{train,val}2017.json`` and ``train2017/``, ``val2017/`` JPEG folders
under ``root`` (the layout of the real COCO download that ``data.source=coco`` reads). Each image holds one to three
filled rectangles; a rectangle's colour is its class (red, green, blue), so a small detector can learn them. The
category ids are deliberately NOT contiguous (1, 3, 7) so tests see the sorted-id -> contiguous-label mapping.
Annotations carry ``bbox`` ([x, y, w, h] in pixels), ``area`` (w * h), ``iscrowd`` (0; ``crowd=True`` makes one
val annotation a crowd box) and ``category_id``; images carry ``id``, ``file_name``, ``height``, ``width``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# COCO-style non-contiguous ids -> colour; contiguous labels are 0, 1, 2 in this order (sorted by id)
CATEGORIES = (
    {"id": 1, "name": "red", "supercategory": "shape"},
    {"id": 3, "name": "green", "supercategory": "shape"},
    {"id": 7, "name": "blue", "supercategory": "shape"},
)
COLOURS = {1: (230, 30, 30), 3: (30, 200, 30), 7: (30, 30, 230)}


def make_coco(
    root: Path,
    n_train: int = 24,
    n_val: int = 8,
    size: tuple[int, int] = (48, 64),
    seed: int = 0,
    crowd: bool = False,
    empty_train: int = 0,
    empty_val: int = 0,
) -> Path:
    """Write a tiny COCO-format set under ``root`` and return ``root``.

    ``size`` is (height, width) of every image (the last training image is transposed to (width, height) so the
    resize sees both orientations). ``empty_train``/``empty_val`` extra images have no annotation at all (the
    empty-image rule), ``crowd`` marks the first val annotation ``iscrowd=1``. Image and annotation ids start at 1
    (train) and 1001 (val); the json files are the only metadata (nothing else is read).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count, empty, first_id in (("train", n_train, empty_train, 1), ("val", n_val, empty_val, 1001)):
        folder = root / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        ann_id = first_id
        for i in range(count + empty):
            h, w = size
            if split == "train" and i == count - 1:
                h, w = w, h
            image = rng.integers(0, 90, (h, w, 3)).astype(np.uint8)
            image_id = first_id + i
            name = f"{image_id:012d}.jpg"
            n_boxes = 0 if i >= count else int(rng.integers(1, 4))
            for _ in range(n_boxes):
                cat = CATEGORIES[int(rng.integers(0, len(CATEGORIES)))]["id"]
                # from a tenth to two thirds of the image: small, medium and large boxes at 240x320
                bw, bh = int(rng.integers(max(2, w // 10), 2 * w // 3)), int(rng.integers(max(2, h // 10), 2 * h // 3))
                x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                image[y0 : y0 + bh, x0 : x0 + bw] = COLOURS[cat]
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": cat,
                        "bbox": [float(x0), float(y0), float(bw), float(bh)],
                        "area": float(bw * bh),
                        "iscrowd": 1 if (crowd and split == "val" and ann_id == first_id) else 0,
                        "segmentation": [[x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]],
                    }
                )
                ann_id += 1
            Image.fromarray(image).save(folder / name, quality=95)
            images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        payload = {
            "info": {"description": "kdlab tiny COCO-format test set"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [dict(c) for c in CATEGORIES],
        }
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(payload))
    return root


def edit_annotations(root: Path, split: str, edit) -> None:
    """Load ``annotations/instances_<split>2017.json``, call ``edit(payload)`` (which changes it in place) and write
    it back: the bad-input tests use it to plant one bad record."""
    path = Path(root) / "annotations" / f"instances_{split}2017.json"
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))
