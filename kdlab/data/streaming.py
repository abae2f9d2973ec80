"""The streaming loader: images decoded from files by worker processes, for datasets too large to hold in memory.

It has the interface the trainer uses from :class:`kdlab.data.loader.DeviceLoader` (``train_batches``,
``eval_batches``, ``steps_per_epoch``, ``num_train``, ``train_labels``, ``views``, ``val``) and is built on
``torch.utils.data.DataLoader`` with ``data.workers`` processes. Workers decode with Pillow, transform and return
uint8 crops; the batch travels to the device as uint8 (pinned memory on CUDA) and is normalised there, so the
host-to-device copy is a quarter of a float batch.

Transforms (the standard ImageNet recipe, written with Pillow, no torchvision):

- train (``data.augment=crop_flip``): random-resized crop (area fraction uniform in ``data.crop_scale``, aspect
  ratio log-uniform in [3/4, 4/3], ten attempts then a centre crop of the clamped ratio, as torchvision's
  ``RandomResizedCrop``) resized bilinearly to ``data.crop_size``, then a horizontal flip with probability 1/2.
  ``flip`` uses the evaluation transform plus the flip; ``none`` the evaluation transform alone.
- eval: resize the shorter side to ``data.resize_size`` (the longer side to ``int(resize_size * long / short)``),
  then the centre ``data.crop_size`` square (offsets rounded as torchvision's ``CenterCrop``). Both steps are one
  Pillow ``resize`` with a source box, which equals resizing then cropping up to rounding.
- train, per-sample augmentations (``data.rand_augment``, ``data.color_jitter``, ``data.random_erasing``, Mixup/CutMix;
  :mod:`kdlab.data.augment_pipeline`): RandAugment and colour jitter run in the worker on the crop (the batched ops
  of :mod:`kdlab.data.augment` on one image, drawn from a torch generator seeded by the sample's own generator);
  random erasing runs on the device after normalisation, drawn per ``(seed, epoch, step, rank)``; Mixup/CutMix mixes
  each rank's part of the batch with the lambda and box of the global batch (drawn per ``(seed, epoch, step)``).

Randomness is a pure function of ``(seed, epoch, sample)``: the epoch's order comes from a generator seeded by
``(seed, epoch)`` (the same permutation as :class:`~kdlab.data.loader.DeviceLoader`), each sample's crop and flip
from a numpy generator seeded by ``(seed, epoch, dataset index)``. A run resumed mid-epoch skips the consumed
batches and replays exactly the batches an uninterrupted run would have seen, whatever the number of workers,
with no loader state to checkpoint.

Distributed (:meth:`StreamingLoader.shard`, the interface of ``DeviceLoader.shard``): each step's global batch
(``data.batch_size`` samples of the permutation) is cut into ``world_size`` contiguous, equal parts and rank ``r``
loads only part ``r``; a last partial batch is trimmed to a multiple of ``world_size``. Because augmentation is per
sample, the union of the ranks' batches equals the single-process batch (excepted: the ``strong`` view, whose
RandAugment draws are per rank and step, random erasing, drawn per rank and step, and Mixup/CutMix, which pairs
images within a rank's part). ``eval_batches(..., shard=True)`` gives each rank a contiguous part of
the split.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdlab.config import DataConfig
from kdlab.data.augment import BatchAugment
from kdlab.data.augment_pipeline import ERASE_STREAM, TrainAugment
from kdlab.data.base import DataError, FileSet, StreamingSplits
from kdlab.data.loader import BatchPlan
from kdlab.seeding import derive_seed, make_generator
from kdlab.types import DEFAULT_VIEW, Batch

log = logging.getLogger(__name__)

ASPECT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
"""Aspect-ratio range (width / height) of the random-resized crop."""
_STREAM_ORDER, _STREAM_SAMPLE, _STREAM_STRONG = 1, 3, 4  # derive_seed streams (1 = epoch order, as DeviceLoader)


def _pil():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib, a dependency
        raise DataError("streamed datasets decode images with Pillow: pip install pillow") from None
    return Image


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    rng: np.random.Generator,
    ratio: tuple[float, float] = ASPECT_RATIO,
) -> tuple[int, int, int, int]:
    """The source box of a random-resized crop.

    Args:
        width: image width ``W``.
        height: image height ``H``.
        scale: range of the crop's area as a fraction of ``W * H``.
        rng: randomness of this sample.
        ratio: range of the crop's aspect ratio ``w / h`` (drawn log-uniformly).

    Returns:
        ``(left, top, w, h)`` in pixels, inside the image.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def center_crop_box(width: int, height: int, resize_size: int, crop_size: int) -> tuple[float, float, float, float]:
    """The source box of "resize the shorter side to ``resize_size``, then take the centre ``crop_size`` square".

    Returns:
        ``(left, top, right, bottom)`` in source pixels (floats), for ``Image.resize(..., box=...)``.
    """
    if width <= height:
        new_w, new_h = resize_size, int(resize_size * height / width)
    else:
        new_w, new_h = int(resize_size * width / height), resize_size
    top = round((new_h - crop_size) / 2.0)
    left = round((new_w - crop_size) / 2.0)
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + crop_size) * sx, (top + crop_size) * sy)


def load_rgb(path: Path):
    """Decode ``path`` with Pillow as an RGB image (grayscale and CMYK JPEGs are converted)."""
    image_mod = _pil()
    try:
        with image_mod.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, image_mod.DecompressionBombError) as err:
        raise DataError(f"could not decode image {path} ({type(err).__name__}: {err}); remove or replace it") from None


class ImageTransform:
    """Decode-side transform of one image to a uint8 ``[S, S, 3]`` array (the module docstring's recipe).

    Args:
        crop_size: output side ``S``.
        resize_size: evaluation resize of the shorter side.
        scale: area range of the random-resized crop.
        train: training transform (random) or evaluation transform (deterministic).
        augment: ``data.augment`` (``crop_flip``, ``flip``, ``none``); only read when ``train``.
        ops: the per-sample RandAugment and colour jitter of the training transform (after the flip; drawn from a
            torch generator seeded by the sample's own ``rng``); None or inactive: none.
    """

    def __init__(
        self,
        crop_size: int,
        resize_size: int,
        scale: tuple[float, float],
        train: bool,
        augment: str = "crop_flip",
        ops: BatchAugment | None = None,
    ) -> None:
        self.crop_size = crop_size
        self.resize_size = resize_size
        self.scale = scale
        self.random_crop = train and augment == "crop_flip"
        self.flip = train and augment in ("crop_flip", "flip")
        self.ops = ops if train and ops is not None and ops.uint8_active else None

    def __call__(self, img, rng: np.random.Generator | None = None) -> np.ndarray:
        """``img`` (an RGB PIL image) -> ``[S, S, 3]`` uint8; ``rng`` is required for the training transform."""
        image_mod = _pil()
        s = self.crop_size
        if self.random_crop:
            left, top, w, h = random_resized_crop_box(img.width, img.height, self.scale, rng)
            box: tuple[float, ...] = (left, top, left + w, top + h)
        else:
            box = center_crop_box(img.width, img.height, self.resize_size, s)
        out = img.resize((s, s), image_mod.Resampling.BILINEAR, box=box)
        if self.flip and rng.random() < 0.5:
            out = out.transpose(image_mod.Transpose.FLIP_LEFT_RIGHT)
        arr = np.asarray(out, dtype=np.uint8)
        if self.ops is not None:  # RandAugment, colour jitter: the batched ops on this one image, in the worker
            g = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
            img = torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0)
            arr = self.ops.uint8_stage(img, g)[0].permute(1, 2, 0).numpy()
        return arr


class KeyedDataset(torch.utils.data.Dataset):
    """A map-style dataset read by key, shared by the worker-decoded loaders (image files, segmentation pairs,
    detection boxes): ``(i, epoch)`` in training, where item ``i``'s augmentation draws from a generator seeded by
    ``(seed, epoch, i, stream)`` (the same draws whichever worker reads it, and on resume), or ``i`` in evaluation
    (no augmentation: the generator is None).

    Subclasses set :attr:`stream` (their ``derive_seed`` stream) and implement :meth:`read`.

    Args:
        items: the set read (``len`` gives the dataset's length).
        transform: what :meth:`read` applies.
        seed: run seed.
    """

    stream: int = _STREAM_SAMPLE

    def __init__(self, items, transform: Callable, seed: int) -> None:
        self.items = items
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple:
        i, epoch = key if isinstance(key, tuple) else (key, None)
        rng = None if epoch is None else np.random.default_rng(derive_seed(self.seed, epoch, i, self.stream))
        return self.read(i, rng)

    def read(self, i: int, rng: np.random.Generator | None) -> tuple:
        """Item ``i`` (augmented with ``rng``, or not when it is None) and ``i`` last."""
        raise NotImplementedError


class _FileDataset(KeyedDataset):
    """Items ``(i, epoch)`` (training) or ``i`` (evaluation) of a :class:`FileSet` -> ``([S, S, 3] uint8, i)``."""

    def read(self, i: int, rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
        return self.transform(load_rgb(self.items.path(i)), rng), i


def _collate(items: list[tuple[np.ndarray, int]]) -> tuple[Tensor, Tensor]:
    """Stack to ``[B, 3, S, S]`` uint8 (contiguous) and ``[B]`` int64 indices."""
    x = np.stack([a for a, _ in items]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.tensor([i for _, i in items], dtype=torch.int64)


class _Schedule:
    """A batch sampler whose batches are set before each pass (so one DataLoader keeps its workers)."""

    def __init__(self) -> None:
        self.batches: list[list] = []

    def __iter__(self) -> Iterator[list]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class WorkerPlan(BatchPlan):
    """The epoch order and per-rank step indices shared by the loaders whose samples are decoded in worker
    processes (:class:`StreamingLoader`; the dense and detection loaders through
    :class:`kdlab.data.file_loader.FileSetLoader`): a seeded permutation per epoch, cut by
    :meth:`BatchPlan.step_slice`, each rank taking its contiguous part. Subclasses set ``train``,
    ``_train_labels``, ``seed``, ``device`` and ``_pin``."""

    @property
    def num_train(self) -> int:
        return len(self.train)

    @property
    def train_labels(self) -> Tensor:
        """``[N]`` training labels (zeros for dense samples, which have no single class)."""
        return self._train_labels

    def epoch_order(self, epoch: int) -> Tensor:
        """The permutation of training samples of ``epoch`` (``[N]`` int64 on the CPU)."""
        g = make_generator(torch.device("cpu"), derive_seed(self.seed, epoch, 0, _STREAM_ORDER))
        return torch.randperm(self.num_train, generator=g)

    def step_indices(self, epoch: int, step: int, order: Tensor | None = None) -> Tensor:
        """``[b]`` training indices this rank loads at ``step`` of ``epoch`` (its part of the global batch)."""
        order = self.epoch_order(epoch) if order is None else order
        idx = order[self.step_slice(step)]
        per_rank = self._usable(idx.shape[0]) // self.world_size
        return idx[self.rank * per_rank : (self.rank + 1) * per_rank]

    def _to_device(self, x: Tensor) -> Tensor:
        return x.to(self.device, non_blocking=self._pin)


class StreamingLoader(WorkerPlan):
    """Batches of a :class:`StreamingSplits` dataset, decoded by worker processes.

    Args:
        splits: the dataset (file lists and labels).
        cfg: data config (batch sizes, transforms, ``workers``, validation fraction).
        device: training device.
        seed: run seed (order and augmentation).
        views: views each training batch carries (``"x"``; ``"strong"`` adds a RandAugment view of the crop).
        holdout_fraction: fraction held out as a validation split when ``cfg.val_fraction`` is 0.
        rank: this process's rank (distributed training; or call :meth:`shard` later).
        world_size: number of processes; ``data.batch_size`` is the global batch, each rank loads its share.

    Attributes:
        num_train: samples in the training split (after any held-out split); ``Batch.index`` is in ``[0, N)``.
        train_labels: ``[N]`` labels of the training split on the device.
        val: the held-out validation files, or None.
    """

    def __init__(
        self,
        splits: StreamingSplits,
        cfg: DataConfig,
        device: torch.device,
        seed: int,
        views: tuple[str, ...] = (DEFAULT_VIEW,),
        holdout_fraction: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        from kdlab.data.split import shuffled, stratified_split

        if cfg.crop_size < 1 or cfg.resize_size < cfg.crop_size:
            raise DataError(
                f"data.crop_size={cfg.crop_size} and data.resize_size={cfg.resize_size}: need 1 <= crop_size <= "
                "resize_size (ImageNet: 224 and 256)"
            )
        scale = tuple(cfg.crop_scale)
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise DataError(f"data.crop_scale={list(scale)} must be [low, high] with 0 < low <= high <= 1")
        if cfg.workers < 0:
            raise DataError(f"data.workers={cfg.workers} must be >= 0 (0 decodes in the training process)")
        self.cfg = cfg
        self.device = device
        self.seed = seed
        self.views = tuple(views)
        self.rank, self.world_size = 0, 1
        self.shard(rank, world_size)
        self.num_classes = splits.num_classes
        self.input_size = splits.input_size
        self.scale = scale
        train = splits.train
        fraction = cfg.val_fraction or holdout_fraction
        self.val: FileSet | None = None
        if fraction > 0:
            train_idx, val_idx = stratified_split(train.y, fraction, cfg.split_seed)
            val_idx = shuffled(val_idx, cfg.split_seed)  # mixed classes in every held-out batch of class-sorted files
            self.val = train.subset(val_idx)
            train = train.subset(train_idx)
        self.train = train
        self.test = splits.test
        self._train_labels = train.y.to(device)
        c = self.input_size[0]
        mean = torch.tensor(splits.mean, device=device, dtype=torch.float32).view(1, c, 1, 1)
        std = torch.tensor(splits.std, device=device, dtype=torch.float32).view(1, c, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._shift = mean / std
        self._pin = device.type == "cuda"
        self._schedule = _Schedule()
        self.train_augment = TrainAugment(cfg, splits.mean, splits.num_classes, seed)
        transform = ImageTransform(cfg.crop_size, cfg.resize_size, scale, True, cfg.augment, self.train_augment.ops)
        dataset = _FileDataset(train, transform, seed)
        self._train_loader = self._loader(dataset, self._schedule, persistent=True)

    def _loader(self, dataset: KeyedDataset, sampler, persistent: bool = False) -> torch.utils.data.DataLoader:
        workers = self.cfg.workers
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self._pin,
            persistent_workers=persistent and workers > 0,
        )

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Augmented training batches of ``epoch``, starting at ``start_step`` (for a mid-epoch resume)."""
        unknown = set(self.views) - {DEFAULT_VIEW, "strong"}
        if unknown:
            raise DataError(f"unknown view(s) {sorted(unknown)}; the data layer provides 'x' and 'strong'")
        order = self.epoch_order(epoch)
        steps = range(start_step, self.steps_per_epoch())
        self._schedule.batches = [[(int(i), epoch) for i in self.step_indices(epoch, s, order)] for s in steps]
        for step, (x, index) in zip(steps, self._train_loader):
            raw = self._to_device(x)
            index = self._to_device(index)
            views = {}
            if "strong" in self.views:
                from kdlab.data.randaugment import rand_augment

                g = make_generator(self.device, derive_seed(self.seed, epoch, step, _STREAM_STRONG, self.rank))
                views["strong"] = self.normalize(rand_augment(raw, g))
            g = make_generator(self.device, derive_seed(self.seed, epoch, step, ERASE_STREAM, self.rank))
            x = self.train_augment.erase(self.normalize(raw), g)
            batch = Batch(x=x, y=self._train_labels[index], index=index, views=views)
            yield self.train_augment.mix(batch, epoch, step)  # this rank's part, with the global batch's lambda/box

    def eval_batches(self, split: str = "test", limit: int | None = None, shard: bool = False) -> Iterator[Batch]:
        """Un-augmented (resized, centre-cropped) batches of ``"test"``, ``"val"`` or ``"train"`` in dataset order;
        with ``shard`` only this process's contiguous part of the split (the parts of all processes cover it once)."""
        files = {"test": self.test, "val": self.val, "train": self.train}[split]
        if files is None:
            raise ValueError("there is no validation split: set data.val_fraction > 0")
        transform = ImageTransform(self.cfg.crop_size, self.cfg.resize_size, self.scale, train=False)
        sampler = [list(range(start, stop)) for start, stop in self.eval_ranges(len(files), limit, shard)]
        labels = files.y
        for x, index in self._loader(_FileDataset(files, transform, self.seed), sampler):
            yield Batch(
                x=self.normalize(self._to_device(x)),
                y=self._to_device(labels[index]),
                index=self._to_device(index),
            )


__all__ = ["ImageTransform", "StreamingLoader", "center_crop_box", "load_rgb", "random_resized_crop_box"]
