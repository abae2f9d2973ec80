"""The on-device batch loader: whole dataset as uint8 on the training device, batch-wise augmentation there.

No per-sample Python work in the hot loop: a batch is one gather from the uint8 tensor, one batched random crop
(zero padding, as torchvision's ``RandomCrop(32, padding=4)`` on a PIL image), one batched flip and one fused
normalisation. Randomness is a pure function of ``(seed, epoch, step)``: the epoch's order comes from a
generator seeded by ``(seed, epoch)`` and each batch's augmentation from one seeded by ``(seed, epoch, step)``,
so a run resumed mid-epoch replays exactly the batches an uninterrupted run would have seen, with no loader
state to checkpoint. The per-sample augmentations a config asks for (RandAugment, colour jitter, random erasing) and
Mixup/CutMix follow, on the whole global batch (:mod:`kdlab.data.augment_pipeline`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from kdlab.config import ConfigError, DataConfig
from kdlab.data.augment_pipeline import TrainAugment, take
from kdlab.data.base import DataError, DatasetSplits, ImageSet
from kdlab.distributed import shard_bounds
from kdlab.seeding import derive_seed, make_generator
from kdlab.types import DEFAULT_VIEW, Batch


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Random crops of a zero-padded batch, one offset per sample.

    Args:
        x: ``[B, C, H, W]`` images (any dtype).
        padding: zero padding on each side, in pixels.
        generator: on ``x``'s device.

    Returns:
        ``[B, C, H, W]`` crops.
    """
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # [B, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # [B, 1, 1, W]
    bidx = torch.arange(b, device=x.device)[:, None, None, None]
    cidx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bidx, cidx, rows, cols]


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Horizontal flip of each ``[B, C, H, W]`` sample with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class BatchPlan:
    """What every training loader shares: the global batch, its split over processes, the steps of an epoch and the
    normalisation. Subclasses set ``cfg``, ``seed``, ``rank``, ``world_size``, ``_scale``, ``_shift`` and provide
    ``num_train``."""

    cfg: DataConfig
    rank: int
    world_size: int
    _scale: Tensor
    _shift: Tensor

    @property
    def num_train(self) -> int:
        raise NotImplementedError

    @property
    def batch_size(self) -> int:
        """The global training batch (all ranks together)."""
        return self.cfg.batch_size

    def shard(self, rank: int, world_size: int) -> None:
        """Make this loader yield process ``rank``'s part of every batch of a ``world_size``-process run.

        ``data.batch_size`` stays the global batch: each training batch is drawn, ordered and augmented exactly as in
        one process, then cut into ``world_size`` contiguous, equal shards. A last partial batch of an epoch
        (``data.drop_last: false``) is trimmed to a multiple of ``world_size`` (at most ``world_size - 1`` samples of
        that epoch are skipped). Evaluation batches are sharded by :meth:`eval_batches` with ``shard=True``.

        Raises:
            ConfigError: ``data.batch_size`` is not a multiple of ``world_size``.
        """
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside 0..{world_size - 1}")
        if self.batch_size % world_size:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is the global batch and must be divisible by the {world_size} "
                f"processes; set data.batch_size to a multiple of {world_size}"
            )
        self.rank, self.world_size = rank, world_size

    def _usable(self, size: int) -> int:
        """Samples of a global batch of ``size`` that are trained on (a multiple of the world size)."""
        return size - size % self.world_size

    def merges_last_batch(self) -> bool:
        """Whether the epoch's last partial batch is merged into the one before it.

        The one last-batch rule of every training loader (in-memory, streaming, token): with ``n`` training samples
        and the global batch ``b``, a remainder ``r = n % b`` with ``0 < r < data.last_batch_min_fraction * b`` (1/8
        by default) is merged into the previous batch, which then holds ``b + r`` samples; a larger remainder stays a
        batch of its own (CIFAR's ``50000 % 64 = 16`` keeps the references' 16-sample batch) and
        ``data.drop_last: true`` drops it whatever its size. Why: an SGD step on the mean loss of 2 samples moves the
        weights as far as one of 64, with the gradient noise and the batch-norm statistics of 2 samples; on 450
        CIFAR-10 images (7 x 64 + 2), kd with that batch reached 26.95 % and without it 32.95 % (seed 0, issue 22;
        re-estimating the stored batch-norm statistics recovered less than 0.4 point: it is the training step).
        Merging keeps every sample in every epoch (unlike dropping) and grows one batch by less than 1/8. The plan
        is a function of ``n``, ``b`` and the config only, so a resumed run replays the same batches.
        """
        n, b = self.num_train, self.batch_size
        r = n % b
        return not self.cfg.drop_last and n > b and 0 < r < self.cfg.last_batch_min_fraction * b

    def steps_per_epoch(self) -> int:
        """Optimiser steps in one epoch (see :meth:`merges_last_batch` for the last partial batch)."""
        n, b = self.num_train, self.batch_size
        if self.cfg.drop_last or self.merges_last_batch():
            steps = n // b
        else:
            steps = n // b + (self._usable(n % b) > 0)
        if steps == 0:
            raise DataError(
                f"data.batch_size={b} with data.drop_last=true leaves no batch from {n} training samples; "
                "lower the batch size or set data.drop_last=false"
            )
        return steps

    def step_slice(self, step: int) -> slice:
        """Positions in the epoch's order of the global training batch at ``step`` (``[start, stop)``): ``b``
        samples, the last partial batch, or ``b + r`` for a merged last batch (:meth:`merges_last_batch`)."""
        b = self.batch_size
        start = step * b
        if self.merges_last_batch() and step == self.steps_per_epoch() - 1:
            return slice(start, self.num_train)
        return slice(start, start + b)

    def eval_ranges(self, size: int, limit: int | None, shard: bool) -> list[tuple[int, int]]:
        """``[start, stop)`` of each evaluation batch over the first ``min(limit, size)`` samples of a split, in
        dataset order; with ``shard`` only this process's contiguous part (the parts of all processes cover it once)."""
        n = size if limit is None else min(limit, size)
        lo, hi = shard_bounds(n, self.rank, self.world_size) if shard and self.world_size > 1 else (0, n)
        bs = self.cfg.eval_batch_size
        return [(start, min(start + bs, hi)) for start in range(lo, hi, bs)]

    def normalize(self, x_uint8: Tensor) -> Tensor:
        """``[B, C, H, W]`` uint8 -> normalised float32 (in place on the new float copy: a third of the memory traffic
        of ``x * scale - shift`` with its temporaries, bitwise the same)."""
        return x_uint8.to(torch.float32, copy=True).mul_(self._scale).sub_(self._shift)


@dataclass
class _Split:
    x: Tensor  # [N, C, H, W] uint8 on device
    y: Tensor  # [N] int64 on device


class DeviceLoader(BatchPlan):
    """Batches of one dataset, held on ``device``.

    Args:
        splits: the dataset (uint8 ``[N, H, W, C]`` splits).
        cfg: data config (batch sizes, augmentation, validation fraction).
        device: training device.
        seed: run seed (order and augmentation).
        views: views each training batch carries (``"x"``; ``"strong"`` adds a RandAugment view).
        holdout_fraction: fraction held out as a validation split when ``cfg.val_fraction`` is 0 (a method's
            request, e.g. a bilevel method's outer split).

    Attributes:
        num_train: samples in the training split (after any held-out split); ``Batch.index`` is in ``[0, N)``.
        train_labels: ``[N]`` labels of the training split on the device.
    """

    def __init__(
        self,
        splits: DatasetSplits,
        cfg: DataConfig,
        device: torch.device,
        seed: int,
        views: tuple[str, ...] = (DEFAULT_VIEW,),
        holdout_fraction: float = 0.0,
    ) -> None:
        from kdlab.data.split import shuffled, stratified_split

        self.cfg = cfg
        self.device = device
        self.seed = seed
        self.views = tuple(views)
        self.rank, self.world_size = 0, 1  # shard of every batch this process sees (see shard())
        self.num_classes = splits.num_classes
        self.input_size = splits.input_size
        train = splits.train
        fraction = cfg.val_fraction or holdout_fraction
        self.val: _Split | None = None
        if fraction > 0:
            train_idx, val_idx = stratified_split(train.y, fraction, cfg.split_seed)
            val_idx = shuffled(val_idx, cfg.split_seed)  # mixed classes in every held-out batch of class-sorted files
            self.val = self._to_device(train.subset(val_idx))
            train = train.subset(train_idx)
        self.train = self._to_device(train)
        self.test = self._to_device(splits.test)
        c = self.input_size[0]
        self.mean = torch.tensor(splits.mean, device=device, dtype=torch.float32).view(1, c, 1, 1)
        self.std = torch.tensor(splits.std, device=device, dtype=torch.float32).view(1, c, 1, 1)
        # normalise as (x_uint8 * scale - shift): one fused multiply-add per batch
        self._scale = 1.0 / (255.0 * self.std)
        self._shift = self.mean / self.std
        self.train_augment = TrainAugment(cfg, splits.mean, splits.num_classes, seed)
        unknown = set(self.views) - {DEFAULT_VIEW, "strong"}
        if unknown:
            raise ValueError(f"unknown view(s) {sorted(unknown)}; the data layer provides 'x' and 'strong'")

    def _to_device(self, split: ImageSet) -> _Split:
        x = split.x.permute(0, 3, 1, 2).contiguous().to(self.device)
        return _Split(x, split.y.to(self.device))

    @property
    def num_train(self) -> int:
        return int(self.train.y.shape[0])

    @property
    def train_labels(self) -> Tensor:
        return self.train.y

    def epoch_order(self, epoch: int) -> Tensor:
        """The permutation of training samples of ``epoch`` (``[N]`` on the device)."""
        g = make_generator(torch.device("cpu"), derive_seed(self.seed, epoch, 0, 1))
        return torch.randperm(self.num_train, generator=g).to(self.device)

    def _augment(self, x: Tensor, g: torch.Generator) -> Tensor:
        if self.cfg.augment == "crop_flip":
            x = random_crop(x, self.cfg.crop_padding, g)
        if self.cfg.augment in ("crop_flip", "flip"):
            x = random_flip(x, g)
        return x

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Augmented training batches of ``epoch``, starting at ``start_step`` (for a mid-epoch resume)."""
        order = self.epoch_order(epoch)
        for step in range(start_step, self.steps_per_epoch()):
            idx = order[self.step_slice(step)]
            raw = self.train.x[idx]
            g = make_generator(self.device, derive_seed(self.seed, epoch, step, 2))
            # several processes: augment the global batch (the same draws as one process), keep this rank's shard
            part = slice(None)
            if self.world_size > 1:
                per_rank = self._usable(idx.shape[0]) // self.world_size
                part = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
            aug = self.train_augment
            views = {}
            if "strong" in self.views:
                from kdlab.data.randaugment import rand_augment

                views["strong"] = self.normalize(rand_augment(self._augment(raw, g), g))
            x = aug.erase(self.normalize(aug.images(self._augment(raw, g), g)), g)
            # every draw (and the mixing: pairs may cross shards) is of the global batch; this rank keeps its part
            yield take(aug.mix(Batch(x=x, y=self.train.y[idx], index=idx, views=views), epoch, step), part)

    def eval_batches(self, split: str = "test", limit: int | None = None, shard: bool = False) -> Iterator[Batch]:
        """Un-augmented batches of ``"test"``, ``"val"`` or ``"train"`` in dataset order; with ``shard`` only this
        process's contiguous part of the split (see :meth:`shard`; the parts of all processes cover it once)."""
        data = {"test": self.test, "val": self.val, "train": self.train}[split]
        if data is None:
            raise ValueError("there is no validation split: set data.val_fraction > 0")
        for start, stop in self.eval_ranges(int(data.y.shape[0]), limit, shard):
            idx = torch.arange(start, stop, device=self.device)
            yield Batch(x=self.normalize(data.x[idx]), y=data.y[idx], index=idx)
