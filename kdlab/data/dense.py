"""Dense-label datasets (semantic segmentation): image / label-map pairs decoded by worker processes.

A dense source returns :class:`DenseSplits`: each split is a :class:`PairSet` of image and label-map paths. The
:class:`DenseLoader` has the interface of the other loaders (:class:`~kdlab.data.loader.BatchPlan`: the global batch,
rank shards, the last-batch rule, the seeded order replayed exactly on resume) and yields
:class:`~kdlab.types.Batch` with ``x`` ``[B, 3, h, w]`` normalised images and ``y`` ``[B, h, w]`` int64 label maps
(train ids ``0..K-1``, :data:`IGNORE_INDEX` for unlabelled pixels). The trainer carries them like any batch; the
models' dense logits and the metrics' per-pixel rows (:func:`kdlab.metrics.dense_rows`) do the rest.

Training transform (per pair, in the decoding workers; CIRKD / DIST_KD ``dataset/datasets.py``, ``CSTrainValSet``):

1. random scale ``s`` from ``{0.5, 0.6, ..., 2.0}`` (the reference's ``0.5 + randint(0, 15) / 10``; the range is
   ``data.scale_range``, in steps of 0.1): the image resized bilinearly, the label map with nearest neighbour;
2. padding on the bottom and right up to ``data.crop_size`` (``[height, width]``): the image with the dataset's mean
   colour (0 after normalisation, as the reference pads its mean-subtracted image with 0), the labels with 255;
3. a random ``crop_size`` crop (the same offsets for image and labels);
4. a horizontal flip with probability 1/2 (both).

Evaluation: the whole image at full resolution (no resize, no crop; the logits are upsampled to the label size by the
metrics), batched ``data.eval_batch_size`` at a time when consecutive images share a size. Sliding-window
evaluation is not implemented.

Randomness is a pure function of ``(seed, epoch, sample)`` as in the streaming loader: the epoch's order from
``(seed, epoch)``, each pair's scale, crop and flip from ``(seed, epoch, dataset index)``, whatever the number of
workers, so a resumed run sees exactly the batches an uninterrupted run would have.

Bad input is refused with the file named: a missing label map, a label map whose size differs from its image, a label
value outside the raw ids the source maps (and not 255), an image that does not decode.

Deviations from the reference: images are RGB normalised with the source's mean and std (the reference subtracts a
BGR Caffe mean without scaling); the train ids and the ignore label are 255 (the reference uses -1).
"""

from __future__ import annotations

import logging
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

#: Label of pixels that no loss term and no metric counts.
IGNORE_INDEX = 255
#: Metrics a dense source declares by default (``train.metrics`` overrides; ``top1`` is the pixel accuracy).
DENSE_METRICS: tuple[str, ...] = ("miou", "pixel_acc")
_STREAM_SAMPLE = 5  # derive_seed stream of the per-pair augmentation (stream 1, the epoch order: WorkerPlan)
_INVALID = 254  # marks raw label values outside the source's map in a lookup table (never a train id)


@dataclass
class PairSet:
    """One split of a dense dataset.

    Attributes:
        root: folder the paths are relative to.
        images: ``[N]`` numpy byte strings, image paths relative to ``root``.
        labels: ``[N]`` numpy byte strings, label-map paths relative to ``root`` (same order).
    """

    root: Path
    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images, dtype=np.bytes_)
        self.labels = np.asarray(self.labels, dtype=np.bytes_)
        if self.images.shape != self.labels.shape or self.images.ndim != 1:
            raise DataError(
                f"a dense split needs [N] images and [N] label maps, got {self.images.shape} and {self.labels.shape}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def image_path(self, i: int) -> Path:
        """Absolute path of image ``i``."""
        return self.root / self.images[i].decode("utf-8")

    def label_path(self, i: int) -> Path:
        """Absolute path of label map ``i``."""
        return self.root / self.labels[i].decode("utf-8")

    def subset(self, index: Tensor) -> PairSet:
        """The pairs at ``index`` (``[M]`` int64)."""
        i = index.cpu().numpy()
        return PairSet(self.root, self.images[i], self.labels[i])


@dataclass
class DenseSplits:
    """A segmentation dataset (see the module docstring).

    Attributes:
        name: registry name.
        train, test: the splits (``test`` is the evaluation split, e.g. Cityscapes ``val``).
        num_classes: ``K`` (train ids ``0..K-1``).
        label_map: ``[256]`` uint8 lookup from the raw values of the label files to train ids (255: ignore;
            :data:`_INVALID` for values the source does not know, refused when read).
        mean, std: per-channel RGB statistics in [0, 1].
        crop_size: ``(height, width)`` of the training crops.
        scale_range: ``(low, high)`` of the training scale.
        classes: class names.
        metrics: the source's default evaluation metrics.
    """

    name: str
    train: PairSet
    test: PairSet
    num_classes: int
    label_map: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_size: tuple[int, int] = (512, 1024)
    scale_range: tuple[float, float] = (0.5, 2.0)
    classes: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = DENSE_METRICS
    val: PairSet | None = field(default=None)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(3, h, w)``: the size the models are probed at when a run is built (tap shapes): the crop divided by 8
        (at least 32 pixels a side), to keep the probe cheap; training crops are ``crop_size``."""
        h, w = self.crop_size
        return (3, max(32, -(-h // 8)), max(32, -(-w // 8)))

    @property
    def model_kwargs(self) -> dict:
        """Extra model-builder arguments (none)."""
        return {}


def lookup_table(mapping: dict[int, int], keep_ignore: bool = True) -> np.ndarray:
    """A ``[256]`` uint8 table: ``mapping`` (raw value -> train id or 255), 255 -> 255 when ``keep_ignore``, and every
    other value marked invalid."""
    table = np.full(256, _INVALID, dtype=np.uint8)
    for raw, train_id in mapping.items():
        table[raw] = train_id
    if keep_ignore:
        table[IGNORE_INDEX] = IGNORE_INDEX
    return table


def crop_hw(cfg: DataConfig) -> tuple[int, int]:
    """``data.crop_size`` as ``(height, width)`` (an int is a square).

    Raises:
        ConfigError: not one or two positive sizes.
    """
    size = cfg.crop_size
    hw = [size, size] if isinstance(size, int) else list(size)
    if len(hw) != 2 or any(int(v) < 1 for v in hw):
        raise ConfigError(f"data.crop_size={size!r}: give [height, width] (e.g. [512, 1024]) or one side")
    return int(hw[0]), int(hw[1])


def scale_pair(cfg: DataConfig) -> tuple[float, float]:
    """``data.scale_range`` as ``(low, high)`` with ``0 < low <= high``.

    Raises:
        ConfigError: not two positive scales in increasing order.
    """
    scales = list(cfg.scale_range)
    if len(scales) != 2 or not 0 < scales[0] <= scales[1]:
        raise ConfigError(
            f"data.scale_range={scales!r}: give [low, high] with 0 < low <= high (the reference's [0.5, 2.0])"
        )
    return float(scales[0]), float(scales[1])


def read_label(path: Path, table: np.ndarray, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode label map ``path`` (a one-channel or palette PNG of raw values) to ``[H, W]`` uint8 train ids.

    Raises:
        DataError: the file is missing or does not decode, its size differs from ``image_size`` (``(W, H)``), or it
            holds a value the source does not know (naming the file and the values).
    """
    from PIL import Image

    if not path.is_file():
        raise DataError(f"label map {path} is missing (every image needs its label map)")
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                img = img.convert("L")
            size = img.size
            raw = np.asarray(img)
    except (OSError, ValueError) as err:
        raise DataError(f"could not decode label map {path} ({type(err).__name__}: {err})") from None
    if image_size is not None and tuple(size) != tuple(image_size):
        raise DataError(
            f"label map {path} is {size[0]}x{size[1]} (W x H) but its image is {image_size[0]}x{image_size[1]}: "
            "a label map must have its image's size"
        )
    if raw.dtype != np.uint8:
        if raw.min() < 0 or raw.max() > 255:
            raise DataError(f"label map {path} holds values outside 0..255 (min {raw.min()}, max {raw.max()})")
        raw = raw.astype(np.uint8)
    out = table[raw]
    if (out == _INVALID).any():
        bad = sorted(int(v) for v in np.unique(raw[out == _INVALID]))[:10]
        known = sorted(int(v) for v in np.flatnonzero(table != _INVALID))
        raise DataError(
            f"label map {path} holds value(s) {bad} outside the dataset's label set {known[:40]} (and not 255)"
        )
    return out


class PairTransform:
    """Decode-side transform of one pair: the training recipe of the module docstring, or the evaluation identity.

    Args:
        table: raw-label lookup (:func:`lookup_table`).
        crop: ``(height, width)`` of training crops.
        scale_range: ``(low, high)``; scales are ``low, low + 0.1, ..., high``.
        fill: ``(r, g, b)`` uint8 padding colour of images (the dataset mean).
        train: random training transform, else the evaluation identity.
    """

    def __init__(
        self,
        table: np.ndarray,
        crop: tuple[int, int],
        scale_range: tuple[float, float],
        fill: tuple[int, int, int],
        train: bool,
    ) -> None:
        self.table = table
        self.crop = crop
        steps = round((scale_range[1] - scale_range[0]) * 10)
        self.scales = [round(scale_range[0] + i / 10, 4) for i in range(steps + 1)]
        self.fill = fill
        self.train = train

    def __call__(self, image_path: Path, label_path: Path, rng: np.random.Generator | None) -> tuple:
        """``([h, w, 3] uint8 image, [h, w] uint8 labels)``."""
        from PIL import Image

        img = load_rgb(image_path)
        label = read_label(label_path, self.table, img.size)
        if not self.train:
            return np.asarray(img, dtype=np.uint8), label
        s = self.scales[int(rng.integers(0, len(self.scales)))]
        w, h = img.size
        if s != 1.0:
            size = (max(1, int(w * s + 0.5)), max(1, int(h * s + 0.5)))
            img = img.resize(size, Image.Resampling.BILINEAR)
            label = np.asarray(Image.fromarray(label).resize(size, Image.Resampling.NEAREST))
        image = np.asarray(img, dtype=np.uint8)
        ch, cw = self.crop
        h, w = label.shape
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        if ph or pw:
            padded = np.empty((h + ph, w + pw, 3), dtype=np.uint8)
            padded[:] = np.asarray(self.fill, dtype=np.uint8)
            padded[:h, :w] = image
            image = padded
            label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        h, w = label.shape
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        image = image[top : top + ch, left : left + cw]
        label = label[top : top + ch, left : left + cw]
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(label)


class _PairDataset(KeyedDataset):
    """Items ``(i, epoch)`` (training) or ``i`` (evaluation) of a :class:`PairSet` -> ``(image, labels, i)``."""

    stream = _STREAM_SAMPLE

    def read(self, i: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, int]:
        image, label = self.transform(self.items.image_path(i), self.items.label_path(i), rng)
        return image, label, i


def _collate(items: list) -> tuple[Tensor, Tensor, Tensor]:
    """``[B, 3, h, w]`` uint8 images, ``[B, h, w]`` int64 labels, ``[B]`` indices (equal sizes)."""
    x = np.stack([a for a, _, _ in items]).transpose(0, 3, 1, 2)
    y = np.stack([b for _, b, _ in items]).astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), torch.tensor([i for *_, i in items])


class DenseLoader(FileSetLoader):
    """Batches of a :class:`DenseSplits` dataset (the interface of :class:`~kdlab.data.streaming.StreamingLoader`).

    Args:
        splits: the dataset.
        cfg: data config (batch sizes, ``crop_size``, ``scale_range``, ``workers``, ``val_fraction``).
        device: training device.
        seed: run seed (order and augmentation).
        views: views of each batch; only ``"x"`` exists for dense data.
        holdout_fraction: fraction of the training pairs held out as the validation split when ``data.val_fraction``
            is 0.
        rank, world_size: this process's part of each global batch (or call :meth:`shard` later).
    """

    task = "segmentation"
    collate = staticmethod(_collate)

    def __init__(
        self,
        splits: DenseSplits,
        cfg: DataConfig,
        device: torch.device,
        seed: int,
        views: tuple[str, ...] = (DEFAULT_VIEW,),
        holdout_fraction: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self._setup(splits, cfg, device, seed, views, holdout_fraction, rank, world_size)
        self.table = splits.label_map
        self._check_batch_sizes()
        fill = tuple(round(255 * m) for m in splits.mean)
        self._fill = fill
        transform = PairTransform(self.table, splits.crop_size, splits.scale_range, fill, train=True)
        self._train_loader = self._loader(_PairDataset(self.train, transform, seed), self._schedule, persistent=True)
        self._crop = splits.crop_size
        self._scale_range = splits.scale_range

    def shard(self, rank: int, world_size: int) -> None:
        """:meth:`BatchPlan.shard`, then refuse a plan that gives a process a training batch of one image (the
        segmentation heads' image-pooling branches normalise a ``[1, C, 1, 1]`` map with BatchNorm, which PyTorch
        refuses in training mode)."""
        super().shard(rank, world_size)
        if getattr(self, "train", None) is not None:
            self._check_batch_sizes()

    def _check_batch_sizes(self) -> None:
        steps = self.steps_per_epoch()
        sizes = {len(range(self.num_train)[self.step_slice(s)]) for s in {0, steps - 1}}
        smallest = min(self._usable(n) // self.world_size for n in sizes)
        if smallest < 2:
            raise ConfigError(
                f"data.batch_size={self.batch_size} over {self.world_size} process(es) with {self.num_train} training "
                f"images gives a process a batch of {smallest} image(s); the segmentation heads' BatchNorm needs at "
                "least 2 per process: raise data.batch_size or set data.drop_last=true"
            )

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Augmented training batches of ``epoch``, from ``start_step`` (a mid-epoch resume)."""
        for _, (x, y, index) in zip(self._schedule_epoch(epoch, start_step), self._train_loader):
            yield Batch(x=self.normalize(self._to_device(x)), y=self._to_device(y), index=self._to_device(index))

    def eval_batches(self, split: str = "test", limit: int | None = None, shard: bool = False) -> Iterator[Batch]:
        """Whole images of ``"test"``, ``"val"`` or ``"train"`` at full resolution in dataset order, up to
        ``data.eval_batch_size`` consecutive images of one size per batch (``shard``: this process's part)."""
        pairs = {"test": self.test, "val": self.val, "train": self.train}[split]
        if pairs is None:
            raise ValueError("there is no validation split: set data.val_fraction > 0")
        transform = PairTransform(self.table, self._crop, self._scale_range, self._fill, train=False)
        ranges = self.eval_ranges(len(pairs), limit, shard)
        items = [[i] for start, stop in ranges for i in range(start, stop)]
        pending: list = []

        def flush() -> Batch:
            x, y, index = _collate(pending)
            pending.clear()
            return Batch(x=self.normalize(self._to_device(x)), y=self._to_device(y), index=self._to_device(index))

        loader = self._loader(_PairDataset(pairs, transform, self.seed), items)
        loader.collate_fn = lambda one: one[0]
        for image, label, i in loader:
            if pending and (len(pending) >= self.cfg.eval_batch_size or pending[0][1].shape != label.shape):
                yield flush()
            pending.append((image, label, int(i)))
        if pending:
            yield flush()


def dense_model_check(splits: object, model_names: list[str]) -> None:
    """Refuse a classification model on a dense dataset (and a dense model on a classification dataset) by name.

    Raises:
        ConfigError: naming the model, the dataset and the models that fit.
    """
    from kdlab.data.detection import detection_model_check
    from kdlab.models import MODELS
    from kdlab.models import model_names as all_models

    if detection_model_check(splits, model_names):  # boxes: detectors only (and detectors on boxes only)
        return
    dense_data = isinstance(splits, DenseSplits)
    known = all_models()
    dense_models = [n for n in known if MODELS.meta(n).get("outputs") == "dense"]
    for name in model_names:
        dense_model = name in dense_models
        if dense_model != dense_data and name in known:
            if dense_data:
                raise ConfigError(
                    f"model {name!r} is a classifier, but dataset {splits.name!r} has per-pixel labels; use a "
                    f"segmentation model: {', '.join(dense_models)}"
                )
            raise ConfigError(
                f"model {name!r} predicts per-pixel labels, but dataset {getattr(splits, 'name', '?')!r} has one "
                "label per image; use a segmentation dataset (cityscapes, voc) or a classifier"
            )


__all__ = [
    "DENSE_METRICS",
    "IGNORE_INDEX",
    "DenseLoader",
    "DenseSplits",
    "PairSet",
    "PairTransform",
    "crop_hw",
    "dense_model_check",
    "lookup_table",
    "read_label",
]
