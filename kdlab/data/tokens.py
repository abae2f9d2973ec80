"""Token datasets (tabular field tokens, word pieces) and their loader.

A token source returns :class:`TokenSplits`: each split is a :class:`TokenSet` of ``[N, L]`` integer ids (a numpy
array, possibly memory-mapped from a cache file, so a 45 M-row table is never read whole) and ``[N]`` labels. The
:class:`TokenLoader` follows the same contract as the image loaders (:class:`~kdlab.data.loader.BatchPlan`: global
batch, rank shards, seeded order replayed exactly on resume) and yields :class:`~kdlab.types.Batch` whose ``x`` is
an ``[B, L]`` int64 tensor (every position real: tabular rows) or a dict of ``[B, L_b]`` tensors ``input_ids``,
``attention_mask`` (and ``token_type_ids`` for text pairs), padded to the longest text of the batch. The trainer
carries either without knowing which.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from kdlab.config import ConfigError, DataConfig
from kdlab.data.base import DataError, default_view_only
from kdlab.data.loader import BatchPlan
from kdlab.seeding import derive_seed, make_generator
from kdlab.types import DEFAULT_VIEW, Batch

log = logging.getLogger("kdlab")

#: Metrics a token source declares by default (``train.metrics`` overrides).
TOKEN_METRICS: tuple[str, ...] = ("top1", "auc", "nll", "ece")


@dataclass
class TokenSet:
    """One split of a token dataset.

    Attributes:
        ids: ``[N, L]`` integer token ids (numpy; may be a read-only memory map).
        y: ``[N]`` int64 labels in ``0..K-1``.
        lengths: ``[N]`` real tokens per row (text: the rest is padding), or None when all ``L`` are real.
        type_ids: ``[N, L]`` token type ids (text pairs), or None.
    """

    ids: np.ndarray
    y: Tensor
    lengths: np.ndarray | None = None
    type_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.ids.ndim != 2 or self.ids.shape[0] != int(self.y.shape[0]):
            raise DataError(f"token ids must be [N, L] with N={int(self.y.shape[0])}, got {tuple(self.ids.shape)}")
        self.y = self.y.long()

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: Tensor) -> TokenSet:
        """The rows at ``index`` (``[M]`` int64), read into memory."""
        i = index.cpu().numpy()
        return TokenSet(
            np.asarray(self.ids[i]),
            self.y[index.cpu()],
            None if self.lengths is None else self.lengths[i],
            None if self.type_ids is None else np.asarray(self.type_ids[i]),
        )


@dataclass
class TokenSplits:
    """A token dataset (see the module docstring).

    Attributes:
        name: registry name.
        train, test: the splits; ``val``: a validation split the source defines (Criteo's 8:1:1), or None (then
            ``data.val_fraction`` or a method's held-out fraction is carved from ``train``).
        num_classes: ``K``.
        vocab_size: ids are in ``0..vocab_size-1``.
        seq_len: ``L``.
        pad_token_id: id of padding.
        classes: class names.
        metrics: the source's default evaluation metrics.
        fields: names of the token positions after ``[CLS]`` (tabular), for messages and reports.
    """

    name: str
    train: TokenSet
    test: TokenSet
    num_classes: int
    vocab_size: int
    seq_len: int
    val: TokenSet | None = None
    pad_token_id: int = 0
    classes: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = TOKEN_METRICS
    fields: tuple[str, ...] = ()
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    @property
    def input_size(self) -> tuple[int, ...]:
        """``(L,)``: the shape of one input without the batch dimension (used by the tap probe)."""
        return (self.seq_len,)

    @property
    def model_kwargs(self) -> dict[str, int]:
        """What a token model must be built with: vocabulary size, positions and the padding id."""
        return {"vocab_size": self.vocab_size, "max_positions": self.seq_len, "pad_token_id": self.pad_token_id}


class TokenLoader(BatchPlan):
    """Batches of a :class:`TokenSplits` on ``device`` (same interface as :class:`~kdlab.data.loader.DeviceLoader`).

    Args:
        splits: the dataset.
        cfg: data config (batch sizes, ``val_fraction``, ``split_seed``).
        device: training device.
        seed: run seed (order).
        views: views of each batch; only ``"x"`` exists for tokens.
        holdout_fraction: fraction held out as the validation split when neither the source nor ``cfg.val_fraction``
            gives one.
    """

    def __init__(
        self,
        splits: TokenSplits,
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
        self.name = splits.name
        self.rank, self.world_size = 0, 1
        self.num_classes = splits.num_classes
        self.input_size = splits.input_size
        self.pad_token_id = splits.pad_token_id
        train = splits.train
        self.val: TokenSet | None = splits.val
        fraction = cfg.val_fraction or holdout_fraction
        if self.val is None and fraction > 0:
            train_idx, val_idx = stratified_split(train.y, fraction, cfg.split_seed)
            val_idx = shuffled(val_idx, cfg.split_seed)  # mixed classes in every held-out batch, as the image loaders
            self.val = train.subset(val_idx)
            train = train.subset(train_idx)
        self.train = train
        self.test = splits.test
        self._train_labels = train.y.to(device)
        self.views = views

    @property
    def views(self) -> tuple[str, ...]:
        return self._views

    @views.setter
    def views(self, views: tuple[str, ...]) -> None:
        self._views = default_view_only(views, f"the token dataset {self.name!r}")

    @property
    def num_train(self) -> int:
        return len(self.train)

    @property
    def train_labels(self) -> Tensor:
        return self._train_labels

    def normalize(self, x: Tensor) -> Tensor:  # tokens are not normalised
        return x

    def epoch_order(self, epoch: int) -> Tensor:
        """The permutation of training rows of ``epoch`` (``[N]``, CPU)."""
        g = make_generator(torch.device("cpu"), derive_seed(self.seed, epoch, 0, 1))
        return torch.randperm(self.num_train, generator=g)

    def inputs(self, data: TokenSet, idx: Tensor) -> Tensor | dict[str, Tensor]:
        """The model input of rows ``idx`` of ``data``: ``[B, L]`` ids, or a dict trimmed to the batch's longest row."""
        i = idx.numpy()
        ids = torch.from_numpy(np.asarray(data.ids[i], dtype=np.int64))
        if data.lengths is None:
            return ids.to(self.device)
        lengths = torch.from_numpy(np.asarray(data.lengths[i], dtype=np.int64))
        width = max(int(lengths.max()), 1)
        out = {
            "input_ids": ids[:, :width],
            "attention_mask": (torch.arange(width)[None, :] < lengths[:, None]).long(),
        }
        if data.type_ids is not None:
            out["token_type_ids"] = torch.from_numpy(np.asarray(data.type_ids[i][:, :width], dtype=np.int64))
        return {k: v.to(self.device) for k, v in out.items()}

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Training batches of ``epoch`` in the seeded order, from ``start_step`` (a mid-epoch resume)."""
        order = self.epoch_order(epoch)
        for step in range(start_step, self.steps_per_epoch()):
            idx = order[self.step_slice(step)]
            if self.world_size > 1:
                per_rank = self._usable(idx.shape[0]) // self.world_size
                idx = idx[self.rank * per_rank : (self.rank + 1) * per_rank]
            yield Batch(x=self.inputs(self.train, idx), y=self.train.y[idx].to(self.device), index=idx.to(self.device))

    def eval_batches(self, split: str = "test", limit: int | None = None, shard: bool = False) -> Iterator[Batch]:
        """Batches of ``"test"``, ``"val"`` or ``"train"`` in dataset order (``shard``: this process's part)."""
        data = {"test": self.test, "val": self.val, "train": self.train}[split]
        if data is None:
            raise ValueError("there is no validation split: set data.val_fraction > 0")
        for start, stop in self.eval_ranges(len(data), limit, shard):
            idx = torch.arange(start, stop)
            yield Batch(x=self.inputs(data, idx), y=data.y[idx].to(self.device), index=idx.to(self.device))


def _takes_tokens(model_name: str) -> bool:
    from kdlab.models import MODELS, model_names

    if model_name.startswith("hf:"):
        return True
    model_names()  # loads the zoo
    return model_name in MODELS and MODELS.meta(model_name).get("inputs") == "tokens"


def model_build_kwargs(splits: object, model_names: list[str]) -> dict[str, int]:
    """Extra keyword arguments of ``kdlab.models.create`` for a dataset's models (a token dataset's vocabulary and
    length; none for images), after checking that every model takes the dataset's kind of input.

    Raises:
        ConfigError: an image model on token data, or a token model (BERT) on images.
    """
    tokens = isinstance(splits, TokenSplits)
    for name in model_names:
        if _takes_tokens(name) != tokens and not name.startswith("timm:"):
            have, want = ("tokens", "token models such as bert4") if tokens else ("images", "image models")
            raise ConfigError(
                f"model {name!r} does not take {have}, but dataset {splits.name!r} yields {have}; use {want} "
                "(kdlab list models)"
            )
        if name.startswith("timm:") and tokens:
            raise ConfigError(f"model {name!r} takes images, but dataset {splits.name!r} yields tokens")
    return splits.model_kwargs if tokens else {}


def token_refusal(err: ValueError, splits: object, method: str) -> ValueError:
    """The error of a method that could not be built: unchanged for image data; for token data a
    :class:`~kdlab.models.base.TapError` that also says why (a sequence model has no image feature maps)."""
    from kdlab.models.base import TapError

    if not isinstance(splits, TokenSplits) or not (isinstance(err, TapError) or "stage" in str(err)):
        return err
    return TapError(
        f"{err}. Method {method!r} needs image feature maps (stage1..stageN, stageK.pre), but the models of the token "
        f"dataset {splits.name!r} are sequence models (BERT: taps embed, layer1..layerN [B, L, H] and pool [B, H]); "
        "use a logit-based or fusion method (ce, kd, dkd, dist, tekap, anl_kd, ada_kd, wls_kd, rw_kd, tgeo_kd) or "
        "one that reads only 'pool' (crd, rkd, pkt, cc, srrl)"
    )


__all__ = ["TOKEN_METRICS", "TokenLoader", "TokenSet", "TokenSplits", "model_build_kwargs", "token_refusal"]
