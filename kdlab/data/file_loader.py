"""The part the segmentation and detection loaders share: a labelled file set decoded in worker processes.

:class:`FileSetLoader` holds what :class:`kdlab.data.dense.DenseLoader` and
:class:`kdlab.data.detection.DetectionLoader` did alike: the held-out split taken from the training set
(``data.val_fraction`` or a method's ``holdout_fraction``, seeded by ``data.split_seed``), the on-device normalisation,
the single extra-view refusal, the persistent training ``DataLoader`` with its own seeded generator, and the epoch's
batch schedule. Subclasses name their task (:attr:`task`), their collate function (:attr:`collate`) and build the
training dataset; epoch order and rank shards come from :class:`~kdlab.data.streaming.WorkerPlan`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from kdlab.config import DataConfig
from kdlab.data.base import DataError, default_view_only
from kdlab.data.streaming import WorkerPlan, _Schedule


class FileSetLoader(WorkerPlan):
    """Common set-up of a worker-decoded, labelled file set (see the module docstring).

    Subclasses set :attr:`task` (a word for messages, e.g. ``"segmentation"``) and :attr:`collate`, and call
    :meth:`_setup` first in their ``__init__``.
    """

    task: str = ""
    collate: Callable = staticmethod(lambda items: items)

    def _setup(
        self,
        splits: object,
        cfg: DataConfig,
        device: torch.device,
        seed: int,
        views: tuple[str, ...],
        holdout_fraction: float,
        rank: int,
        world_size: int,
    ) -> None:
        """Set ``cfg``, ``device``, ``seed``, the rank shard, ``views``, ``train``/``val``/``test`` (the held-out
        split cut from ``splits.train`` when ``splits.val`` is None), the normalisation and the batch schedule."""
        if cfg.workers < 0:
            raise DataError(f"data.workers={cfg.workers} must be >= 0 (0 decodes in the training process)")
        self.cfg = cfg
        self.device = device
        self.seed = seed
        self.name = splits.name
        self.rank, self.world_size = 0, 1
        self.shard(rank, world_size)
        self.views = views
        self.num_classes = splits.num_classes
        self.input_size = splits.input_size
        train, self.val = splits.train, splits.val
        fraction = cfg.val_fraction or holdout_fraction
        if self.val is None and fraction > 0:
            g = torch.Generator().manual_seed(cfg.split_seed)
            perm = torch.randperm(len(train), generator=g)
            n_val = max(1, round(fraction * len(train)))
            self.val = train.subset(perm[:n_val].sort().values)
            train = train.subset(perm[n_val:].sort().values)
        self.train = train
        self.test = splits.test
        self._train_labels = torch.zeros(len(train), dtype=torch.long, device=device)
        mean = torch.tensor(splits.mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(splits.std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._shift = mean / std
        self._pin = device.type == "cuda"
        self._schedule = _Schedule()

    @property
    def views(self) -> tuple[str, ...]:
        return self._views

    @views.setter
    def views(self, views: tuple[str, ...]) -> None:
        self._views = default_view_only(views, f"the {self.task} dataset {self.name!r}")

    def _loader(self, dataset, sampler, persistent: bool = False) -> torch.utils.data.DataLoader:
        # its own generator: a DataLoader iterator otherwise draws its base seed from the global RNG, which would
        # shift the model's dropout masks after a mid-epoch resume (one extra iterator is created then)
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=self.cfg.workers,
            collate_fn=type(self).collate,
            pin_memory=self._pin,
            persistent_workers=persistent and self.cfg.workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _schedule_epoch(self, epoch: int, start_step: int) -> Sequence[int]:
        """Set the training loader's batches of ``epoch`` from ``start_step`` (this rank's ``(index, epoch)`` keys);
        returns the steps, to ``zip`` with the loader."""
        order = self.epoch_order(epoch)
        steps = range(start_step, self.steps_per_epoch())
        self._schedule.batches = [[(int(i), epoch) for i in self.step_indices(epoch, s, order)] for s in steps]
        return steps
