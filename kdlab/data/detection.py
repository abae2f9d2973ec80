"""Object-detection datasets: images with boxes, decoded and transformed by worker processes, batched with padding.

A detection source (``coco``) returns :class:`DetectionSplits`: each split is a :class:`BoxSet` of image paths and
their annotations (boxes ``xyxy`` in the image's own pixels, contiguous labels, crowd flags, COCO areas) held in flat
numpy arrays, so worker processes share them without copy-on-access. :class:`DetectionLoader` has the interface of the
other loaders (:class:`~kdlab.data.streaming.WorkerPlan`: the global batch, rank shards, the last-batch rule, the
seeded order replayed exactly on resume) and yields the batches of the detection contract:

- ``batch.x``: a dict of tensors on the device:

  - ``"images"`` ``[B, 3, H, W]`` float32: each image resized, normalised with the dataset's mean/std and zero-padded
    on the bottom and right to the batch's largest height and width, each rounded up to a multiple of 32
    (:data:`SIZE_DIVISIBLE`; torchvision's ``GeneralizedRCNNTransform.batch_images``);
  - ``"image_sizes"`` ``[B, 2]`` int64: ``(h, w)`` of each resized image before padding;
  - ``"original_sizes"`` ``[B, 2]`` int64: ``(h, w)`` of each image as stored on disk;
  - ``"boxes"`` ``[B, N, 4]`` float32: ``x1, y1, x2, y2`` in resized-image pixels (after the flip), padded rows 0;
  - ``"labels"`` ``[B, N]`` int64: contiguous class ``0..K-1``; ``-1`` on padded rows and on crowd boxes (crowd
    boxes never train).

  ``N`` is the batch's largest box count (at least 1).
- ``batch.y`` ``[B, N, 7]`` float32, the ground truth in ORIGINAL-image pixels: ``x1, y1, x2, y2, label (-1 =
  padding), iscrowd (0/1), area`` (the annotation's COCO ``area``, which the official evaluation uses for its
  small/medium/large ranges). In training batches the boxes are flipped with the image (``y`` always describes the
  image the model saw, at its stored size); evaluation batches are never flipped.
- ``batch.index`` ``[B]``: dataset positions.

Transforms (per image, in the decoding workers; torchvision's detection reference, ``GeneralizedRCNNTransform``):

1. resize so the shorter side is ``data.min_size`` (800) unless the longer side would then exceed ``data.max_size``
   (1333): ``scale = min(min_size / min(h, w), max_size / max(h, w))``, new size ``floor(h * scale)`` x
   ``floor(w * scale)`` (as ``interpolate(scale_factor=scale, recompute_scale_factor=True)``), boxes multiplied by
   the per-axis size ratios (torchvision's ``resize_boxes``);
2. training only (``data.augment`` ``flip`` or ``crop_flip``; ``none`` turns it off): a horizontal flip with
   probability 1/2, ``x1' = w - x2``, ``x2' = w - x1`` (torchvision's reference ``RandomHorizontalFlip``);
3. normalisation on the device, then zero padding (the padded area is 0 after normalisation, as torchvision pads the
   normalised batch).

Randomness is a pure function of ``(seed, epoch, sample)`` as in the streaming and segmentation loaders, so a resumed
run sees exactly the batches an uninterrupted run would have, whatever the number of workers.

Deviations from torchvision: images are resized with Pillow's bilinear filter (antialiased when shrinking; torchvision
interpolates the float tensor without antialiasing) and the resize happens per image in the workers, before
normalisation (torchvision normalises first; bilinear resizing commutes with the per-channel affine normalisation).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdlab.config import ConfigError, DataConfig
from kdlab.data.base import DataError
from kdlab.data.file_loader import FileSetLoader
from kdlab.data.streaming import KeyedDataset, load_rgb
from kdlab.types import DEFAULT_VIEW, Batch

log = logging.getLogger(__name__)

#: Metrics a detection source declares by default.
DETECTION_METRICS: tuple[str, ...] = ("map",)
#: Padded batch heights and widths are multiples of this (the FPN's coarsest stride, torchvision's default).
SIZE_DIVISIBLE = 32
#: Columns of ``batch.y``.
Y_COLUMNS = ("x1", "y1", "x2", "y2", "label", "iscrowd", "area")
_STREAM_SAMPLE = 6  # derive_seed stream of the per-image flip (1: the epoch order, WorkerPlan)


@dataclass
class BoxSet:
    """One split of a detection dataset: images and their annotations in flat arrays.

    Attributes:
        root: folder the image paths are relative to.
        images: ``[N]`` numpy byte strings, image paths relative to ``root``.
        image_ids: ``[N]`` int64, the dataset's own image ids (COCO ``image.id``).
        sizes: ``[N, 2]`` int64 ``(h, w)`` of each image as the annotation file states it.
        offsets: ``[N + 1]`` int64; image ``i``'s annotations are rows ``offsets[i]:offsets[i + 1]``.
        boxes: ``[M, 4]`` float32 ``x1, y1, x2, y2`` in the image's own pixels.
        labels: ``[M]`` int64 contiguous class ``0..K-1``.
        iscrowd: ``[M]`` uint8 (1: a crowd region, evaluated as "ignore", never trained on).
        area: ``[M]`` float32, the annotation's ``area`` (COCO: the segmentation's area).
    """

    root: Path
    images: np.ndarray
    image_ids: np.ndarray
    sizes: np.ndarray
    offsets: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images, dtype=np.bytes_)
        self.image_ids = np.asarray(self.image_ids, dtype=np.int64)
        self.sizes = np.asarray(self.sizes, dtype=np.int64).reshape(-1, 2)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.iscrowd = np.asarray(self.iscrowd, dtype=np.uint8)
        self.area = np.asarray(self.area, dtype=np.float32)
        n, m = self.images.shape[0], self.boxes.shape[0]
        if (
            self.image_ids.shape != (n,)
            or self.sizes.shape != (n, 2)
            or self.offsets.shape != (n + 1,)
            or int(self.offsets[-1]) != m
            or any(a.shape != (m,) for a in (self.labels, self.iscrowd, self.area))
        ):
            raise DataError(f"a detection split needs N={n} images and M={m} annotations in matching arrays")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def image_path(self, i: int) -> Path:
        """Absolute path of image ``i``."""
        return self.root / self.images[i].decode("utf-8")

    def annotations(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(boxes [n, 4], labels [n], iscrowd [n], area [n])`` of image ``i`` (views, not copies)."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.boxes[lo:hi], self.labels[lo:hi], self.iscrowd[lo:hi], self.area[lo:hi]

    @property
    def box_counts(self) -> np.ndarray:
        """``[N]`` annotations per image."""
        return np.diff(self.offsets)

    def subset(self, index: Tensor | np.ndarray) -> BoxSet:
        """The images at ``index`` (``[k]`` int64) with their annotations, in that order."""
        idx = np.asarray(index.cpu().numpy() if isinstance(index, Tensor) else index, dtype=np.int64)
        rows = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx]
        rows_all = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum([r.shape[0] for r in rows], dtype=np.int64)]).astype(np.int64)
        return BoxSet(
            self.root,
            self.images[idx],
            self.image_ids[idx],
            self.sizes[idx],
            offsets,
            self.boxes[rows_all],
            self.labels[rows_all],
            self.iscrowd[rows_all],
            self.area[rows_all],
        )


@dataclass
class DetectionSplits:
    """A detection dataset (see the module docstring).

    Attributes:
        name: registry name.
        train, test: the splits (``test`` is the evaluation split, COCO ``val2017``).
        num_classes: ``K`` (contiguous labels ``0..K-1``; no background class).
        mean, std: per-channel RGB statistics in [0, 1] (ImageNet's).
        min_size, max_size: the resize rule (``data.min_size``, ``data.max_size``).
        classes: class names in label order.
        category_ids: the dataset's own category id of each label (COCO ids sorted: label ``k`` is
            ``category_ids[k]``).
        metrics: the source's default evaluation metrics.
        record: what the source wants in the run record (e.g. the number of dropped boxes).
        val: a validation split given by the source, else None (the loader may hold one out of ``train``).
    """

    name: str
    train: BoxSet
    test: BoxSet
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    min_size: int = 800
    max_size: int = 1333
    classes: tuple[str, ...] | None = None
    category_ids: tuple[int, ...] | None = None
    metrics: tuple[str, ...] = DETECTION_METRICS
    record: dict = field(default_factory=dict)
    val: BoxSet | None = None

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(3, s, s)``: the size models are probed at when a run is built (tap shapes), ``s`` the smaller of
        ``min_size`` and 128 rounded up to a multiple of 32, to keep the probe cheap."""
        s = _round_up(min(self.min_size, 128), SIZE_DIVISIBLE)
        return (3, s, s)

    @property
    def model_kwargs(self) -> dict:
        """Extra model-builder arguments (none)."""
        return {}


def _round_up(v: int, multiple: int) -> int:
    return math.ceil(v / multiple) * multiple


def check_sizes(cfg: DataConfig) -> tuple[int, int]:
    """``(data.min_size, data.max_size)`` after checking ``1 <= min_size <= max_size``.

    Raises:
        ConfigError: naming the two values and the fix.
    """
    lo, hi = int(cfg.min_size), int(cfg.max_size)
    if lo < 1 or hi < lo:
        raise ConfigError(
            f"data.min_size={lo} and data.max_size={hi}: need 1 <= min_size <= max_size (COCO: 800 and 1333); "
            "set data.max_size to at least data.min_size"
        )
    return lo, hi


def resized_hw(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The ``(h, w)`` an ``h x w`` image is resized to (the module docstring's rule, torchvision's)."""
    scale = min(min_size / min(h, w), max_size / max(h, w))
    # floor as interpolate(recompute_scale_factor=True); the epsilon keeps 800 / h * h from flooring to 799
    return max(1, math.floor(h * scale + 1e-6)), max(1, math.floor(w * scale + 1e-6))


def resize_boxes(boxes: np.ndarray, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> np.ndarray:
    """``[n, 4]`` xyxy boxes of an ``old_hw`` image scaled to ``new_hw`` (per-axis ratios, torchvision's rule)."""
    ry, rx = new_hw[0] / old_hw[0], new_hw[1] / old_hw[1]
    return (boxes * np.asarray([rx, ry, rx, ry], dtype=np.float32)).astype(np.float32)


def flip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """``[n, 4]`` xyxy boxes of a horizontally flipped image of ``width`` pixels: ``x1' = w - x2``, ``x2' = w - x1``."""
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


class DetectionTransform:
    """Decode-side transform of one image and its annotations (resize, training flip).

    Args:
        min_size, max_size: the resize rule.
        flip: horizontal flips with probability 1/2 (training).
    """

    def __init__(self, min_size: int, max_size: int, flip: bool) -> None:
        self.min_size = min_size
        self.max_size = max_size
        self.flip = flip

    def __call__(self, boxset: BoxSet, i: int, rng: np.random.Generator | None) -> dict:
        """Image ``i`` of ``boxset``: ``{"image": [h, w, 3] uint8, "boxes": [n, 4] resized (flipped),
        "labels": [n] (-1 on crowd), "y": [n, 7] original-pixel ground truth, "original": (H, W)}``.

        Raises:
            DataError: the image does not decode, or its size differs from the annotation file's.
        """
        from PIL import Image

        path = boxset.image_path(i)
        img = load_rgb(path)
        w0, h0 = img.size
        expected = tuple(int(v) for v in boxset.sizes[i])
        if (h0, w0) != expected:
            raise DataError(
                f"image {path} is {w0}x{h0} (W x H) but its annotation file says {expected[1]}x{expected[0]}: the "
                "boxes would be wrong; replace the image or fix its height/width in the annotation file"
            )
        boxes, labels, iscrowd, area = boxset.annotations(i)
        h, w = resized_hw(h0, w0, self.min_size, self.max_size)
        if (h, w) != (h0, w0):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        image = np.asarray(img, dtype=np.uint8)
        original = boxes.astype(np.float32)
        flipped = self.flip and rng is not None and rng.random() < 0.5
        if flipped:
            image = image[:, ::-1]
            original = flip_boxes(original, w0)
        resized = resize_boxes(original, (h0, w0), (h, w))
        y = np.concatenate(
            [original, labels[:, None].astype(np.float32), iscrowd[:, None].astype(np.float32), area[:, None]], axis=1
        ).astype(np.float32)
        return {
            "image": np.ascontiguousarray(image),
            "boxes": resized,
            "labels": np.where(iscrowd > 0, -1, labels).astype(np.int64),
            "y": y.reshape(-1, len(Y_COLUMNS)),
            "original": (h0, w0),
        }


class _BoxDataset(KeyedDataset):
    """Items ``(i, epoch)`` (training) or ``i`` (evaluation) of a :class:`BoxSet` -> ``(transformed dict, i)``."""

    stream = _STREAM_SAMPLE

    def read(self, i: int, rng: np.random.Generator | None) -> tuple[dict, int]:
        return self.transform(self.items, i, rng), i


def collate_detection(items: list[tuple[dict, int]]) -> dict[str, Tensor]:
    """Pad a list of transformed images into one CPU batch.

    Returns:
        ``{"images": [B, 3, H, W] uint8 (zero-padded, H and W multiples of 32), "image_sizes": [B, 2],
        "original_sizes": [B, 2], "boxes": [B, N, 4], "labels": [B, N], "y": [B, N, 7], "index": [B]}``.
    """
    b = len(items)
    hs = [d["image"].shape[0] for d, _ in items]
    ws = [d["image"].shape[1] for d, _ in items]
    hp, wp = _round_up(max(hs), SIZE_DIVISIBLE), _round_up(max(ws), SIZE_DIVISIBLE)
    n = max(1, max(d["boxes"].shape[0] for d, _ in items))
    images = np.zeros((b, 3, hp, wp), dtype=np.uint8)
    boxes = np.zeros((b, n, 4), dtype=np.float32)
    labels = np.full((b, n), -1, dtype=np.int64)
    y = np.zeros((b, n, len(Y_COLUMNS)), dtype=np.float32)
    y[:, :, 4] = -1
    for j, (d, _) in enumerate(items):
        h, w = hs[j], ws[j]
        images[j, :, :h, :w] = d["image"].transpose(2, 0, 1)
        k = d["boxes"].shape[0]
        boxes[j, :k] = d["boxes"]
        labels[j, :k] = d["labels"]
        y[j, :k] = d["y"]
    return {
        "images": torch.from_numpy(images),
        "image_sizes": torch.tensor([[h, w] for h, w in zip(hs, ws)], dtype=torch.int64),
        "original_sizes": torch.tensor([list(d["original"]) for d, _ in items], dtype=torch.int64),
        "boxes": torch.from_numpy(boxes),
        "labels": torch.from_numpy(labels),
        "y": torch.from_numpy(y),
        "index": torch.tensor([i for _, i in items], dtype=torch.int64),
    }


class DetectionLoader(FileSetLoader):
    """Batches of a :class:`DetectionSplits` dataset (the interface of :class:`~kdlab.data.dense.DenseLoader`).

    Args:
        splits: the dataset.
        cfg: data config (batch sizes, ``workers``, ``augment``, ``val_fraction``).
        device: training device.
        seed: run seed (order and flips).
        views: views of each batch; only ``"x"`` exists for detection data.
        holdout_fraction: fraction of the training images held out as the validation split when
            ``data.val_fraction`` is 0.
        rank, world_size: this process's part of each global batch (or call :meth:`shard` later).
    """

    task = "detection"
    collate = staticmethod(collate_detection)

    def __init__(
        self,
        splits: DetectionSplits,
        cfg: DataConfig,
        device: torch.device,
        seed: int,
        views: tuple[str, ...] = (DEFAULT_VIEW,),
        holdout_fraction: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self._setup(splits, cfg, device, seed, views, holdout_fraction, rank, world_size)
        self._sizes = (splits.min_size, splits.max_size)
        transform = DetectionTransform(*self._sizes, flip=cfg.augment in ("flip", "crop_flip"))
        self._train_loader = self._loader(_BoxDataset(self.train, transform, seed), self._schedule, persistent=True)

    def to_batch(self, cpu: dict[str, Tensor]) -> Batch:
        """A collated CPU batch (:func:`collate_detection`) on the device: images normalised, padding zeroed."""
        sizes = self._to_device(cpu["image_sizes"])
        images = self.normalize(self._to_device(cpu["images"]))
        hp, wp = images.shape[-2:]
        rows = torch.arange(hp, device=images.device)[None, :, None] < sizes[:, 0, None, None]
        cols = torch.arange(wp, device=images.device)[None, None, :] < sizes[:, 1, None, None]
        images.mul_((rows & cols)[:, None].to(images.dtype))  # the padded area is 0 after normalisation
        x = {
            "images": images,
            "image_sizes": sizes,
            "original_sizes": self._to_device(cpu["original_sizes"]),
            "boxes": self._to_device(cpu["boxes"]),
            "labels": self._to_device(cpu["labels"]),
        }
        return Batch(x=x, y=self._to_device(cpu["y"]), index=self._to_device(cpu["index"]))

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Training batches of ``epoch`` (resized, flipped, padded), from ``start_step`` (a mid-epoch resume)."""
        for _, cpu in zip(self._schedule_epoch(epoch, start_step), self._train_loader):
            yield self.to_batch(cpu)

    def eval_batches(self, split: str = "test", limit: int | None = None, shard: bool = False) -> Iterator[Batch]:
        """Resized, unflipped batches of ``"test"``, ``"val"`` or ``"train"`` in dataset order,
        ``data.eval_batch_size`` images each (``shard``: this process's contiguous part)."""
        boxset = {"test": self.test, "val": self.val, "train": self.train}[split]
        if boxset is None:
            raise ValueError("there is no validation split: set data.val_fraction > 0")
        transform = DetectionTransform(*self._sizes, flip=False)
        sampler = [list(range(start, stop)) for start, stop in self.eval_ranges(len(boxset), limit, shard)]
        for cpu in self._loader(_BoxDataset(boxset, transform, self.seed), sampler):
            yield self.to_batch(cpu)


def detection_model_check(splits: object, model_names: list[str]) -> bool:
    """Refuse a model that does not detect on a detection dataset, and a detector on another dataset, by name.

    Returns:
        True when ``splits`` is a detection dataset (all models checked), False otherwise (no model is a detector).

    Raises:
        ConfigError: naming the model, the dataset and the models that fit.
    """
    from kdlab.models import MODELS
    from kdlab.models import model_names as all_models

    known = all_models()
    detectors = [n for n in known if MODELS.meta(n).get("outputs") == "detection"]
    boxes = isinstance(splits, DetectionSplits)
    for name in model_names:
        if name not in known or (name in detectors) == boxes:
            continue
        if boxes:
            raise ConfigError(
                f"model {name!r} does not detect objects, but dataset {splits.name!r} has boxes; use a detection "
                f"model: {', '.join(detectors)}"
            )
        raise ConfigError(
            f"model {name!r} is an object detector, but dataset {getattr(splits, 'name', '?')!r} has no boxes; use "
            "a detection dataset (coco) or a model of the dataset's task (kdlab list models)"
        )
    return boxes


__all__ = [
    "DETECTION_METRICS",
    "SIZE_DIVISIBLE",
    "Y_COLUMNS",
    "BoxSet",
    "DetectionLoader",
    "DetectionSplits",
    "DetectionTransform",
    "check_sizes",
    "collate_detection",
    "detection_model_check",
    "flip_boxes",
    "resize_boxes",
    "resized_hw",
]
