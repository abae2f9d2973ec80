"""Teacher-output reuse (``train.teacher_cache``): compute the frozen teachers' logits once and reuse them.

A frozen teacher in eval mode is a pure function of its input, so its logits can be reused whenever the same input
comes back. Two cases make that happen, and only these are cached (the cache never changes what the student sees):

- ``sample`` (``data.augment: none``): a sample's teacher input is the same image every epoch. The logits of the
  whole training split are computed once, in fixed evaluation batches, into a ``[T, N, K]`` table (T teachers,
  N samples, K classes) and every training batch gathers its rows by ``Batch.index``. Computing the table costs one
  teacher pass over the training set (at ``data.eval_batch_size``); every epoch after that skips the teacher.
  Because the table is computed in fixed batches, a resumed run sees the same table as an uninterrupted one.
- ``replay`` (``train.replay_epochs: R`` > 0): the data stream of epoch ``e`` (order *and* augmentation) is the
  stream of epoch ``e mod R``, so the teacher's logits of each batch ``(e mod R, step)`` are stored the first time
  the batch is seen and reused in every later cycle: ``R`` epochs of teacher forwards, then none. The cost is on
  the augmentation distribution, not on exactness: over ``E`` epochs a sample is seen under at most ``R`` distinct
  augmentations (and in the same batches and order every ``R`` epochs) instead of up to ``E``. ``replay_epochs``
  is a data setting of its own, so a run with and without the cache sees the same stream; it applies without the
  cache too (for a like-for-like comparison).

What saves nothing, and is therefore not offered: a cache keyed by (sample, augmentation) under the ordinary
per-epoch random crop and flip. With 4-pixel padding there are 9 x 9 x 2 = 162 augmentations per sample, so over
240 epochs a key repeats rarely and a dense table would be 162 x N x K floats (3.2 GB for CIFAR-100).

Exactness: ``replay`` hands the method the very tensor the teacher computed on the same batch (bitwise equal
losses). ``sample`` computes each sample's logits in another batch composition than the training batch; on CPU the
values are equal up to float rounding of the batched kernels (tested to 1e-5; usually bitwise).

Per-step random views (RandAugment, colour jitter, random erasing, Mixup and CutMix: DIST's strategies B2/B3,
:func:`random_view_augmentations`) give every sample a new teacher input at every step, so they rule out ``sample``;
``on`` is then an error and ``auto`` logs why. Their draws are a function of (seed, data epoch, step) like the crop
and flip, so ``replay`` still applies (the replayed batch is the same mixed, erased, jittered tensor; tested) at the
cost stated above, which is larger here: these strategies exist to show a new view every step. Without replay a big
teacher is made cheaper by ``train.teacher_precision=bf16`` and ``train.channels_last`` instead
(``benchmarks/big_teacher.py`` measures both).

Only logits are cached: a method that reads teacher feature taps, or a view other than the default one (MLKD's
RandAugment view is random every step), cannot use the cache (``on`` is then an error, ``auto`` logs why and
runs without it). Memory: 4 bytes per logit (``sample``: ``T * N * K``; ``replay``: ``T * R * N * K``), logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from kdlab.config import ConfigError
from kdlab.types import DEFAULT_VIEW, Batch, Needs, Outputs

log = logging.getLogger("kdlab")

#: ``train.teacher_cache`` values.
MODES = ("off", "auto", "on")

TeacherFn = Callable[[Batch], tuple[dict[str, Outputs], ...]]


@dataclass
class CacheStats:
    """Counts for the run record."""

    hits: int = 0
    misses: int = 0
    precomputed: int = 0


def random_view_augmentations(data: object) -> list[str]:
    """The ``data`` settings that draw a new random view of every sample at every step, e.g.
    ``["data.rand_augment", "data.mixup_alpha=0.8"]`` (RandAugment, colour jitter, random erasing, Mixup, CutMix:
    DIST's strategies B2/B3); empty when none is on. A teacher output is never reusable under them."""
    found = []
    for key in ("rand_augment", "random_erasing"):
        if getattr(data, key, None) is not None:
            found.append(f"data.{key}")
    for key in ("color_jitter", "mixup_alpha", "cutmix_alpha"):
        value = getattr(data, key, 0.0) or 0.0
        if value > 0:
            found.append(f"data.{key}={value:g}")
    return found


def cache_plan(
    mode: str | bool,
    needs: Needs,
    num_teachers: int,
    augment: str,
    replay_epochs: int,
    method: str,
    random_views: list[str] | tuple[str, ...] = (),
) -> tuple[str, str]:
    """Decide how teacher outputs can be reused.

    Args:
        mode: ``train.teacher_cache``: ``off``/False, ``on``/True or ``auto``.
        needs: the method's needs.
        num_teachers: teachers of the run.
        augment: ``data.augment``.
        replay_epochs: ``train.replay_epochs``.
        method: the method's name (for messages).
        random_views: the per-step random augmentations that are on (:func:`random_view_augmentations`); any of
            them rules out the per-sample cache (replayed epochs still repeat them exactly).

    Returns:
        ``(kind, reason)``: ``kind`` is ``"off"``, ``"sample"`` or ``"replay"``; ``reason`` says why (for the log
        and the run record).

    Raises:
        ConfigError: ``mode`` is unknown, or ``on`` where the cache cannot apply (the message says what to change).
    """
    if isinstance(mode, bool):  # YAML reads on/off as booleans
        mode = "on" if mode else "off"
    if mode not in MODES:
        raise ConfigError(f"train.teacher_cache={mode!r} is not valid; use one of {', '.join(MODES)}")
    if replay_epochs < 0:
        raise ConfigError(f"train.replay_epochs={replay_epochs} must be >= 0 (0: no replay)")
    if mode == "off":
        return "off", "train.teacher_cache=off"
    problem = None
    if not needs.teacher or num_teachers == 0:
        problem = f"method {method!r} reads no teacher"
    elif needs.teacher_taps:
        problem = (
            f"method {method!r} reads teacher feature taps ({', '.join(sorted(needs.teacher_taps))}); "
            "the cache holds logits only"
        )
    elif tuple(needs.views) != (DEFAULT_VIEW,):
        problem = f"method {method!r} reads the views {list(needs.views)}; the cache holds the default view only"
    elif random_views and replay_epochs == 0:
        problem = (
            f"{', '.join(random_views)} draw a new random view of every sample at every step (DIST's B2/B3 "
            "strategies), so a teacher input never repeats; the teacher runs every step (make it cheaper with "
            "train.teacher_precision=bf16 and train.channels_last=true, or set train.replay_epochs=R to replay R "
            "epochs of views cyclically)"
        )
    elif augment != "none" and replay_epochs == 0:
        problem = (
            f"data.augment={augment} draws a new augmentation every epoch, so a teacher input never repeats; "
            "set data.augment=none, or train.replay_epochs=R to replay R epochs of augmentation cyclically"
        )
    if problem is not None:
        if mode == "on":
            raise ConfigError(f"train.teacher_cache=on: {problem}. Use train.teacher_cache=auto or off")
        log.info("train.teacher_cache=auto: not caching, %s", problem)
        return "off", problem
    if augment == "none" and not random_views:  # random views with replay: only the replayed batches repeat
        return "sample", "data.augment=none: one teacher pass over the training split, reused every epoch"
    return "replay", f"train.replay_epochs={replay_epochs}: the logits of each replayed batch are reused"


@dataclass
class TeacherCache:
    """Reuses teacher logits per sample (``kind="sample"``) or per replayed batch (``kind="replay"``).

    Args:
        kind: ``"sample"`` or ``"replay"`` (see :func:`cache_plan`).
        compute: ``fn(batch) -> tuple of {view: Outputs}`` per teacher (the trainer's teacher forward).
        train_batches: ``fn() -> iterator of Batch`` over the un-augmented training split in fixed batches whose
            ``index`` is the dataset position (``sample`` only).
        num_train: ``N``, training samples (``sample`` only).
    """

    kind: str
    compute: TeacherFn
    train_batches: Callable[[], Iterator[Batch]] | None = None
    num_train: int = 0
    stats: CacheStats = field(default_factory=CacheStats)
    _table: Tensor | None = None  # sample: [T, N, K]
    _batches: dict[tuple[int, int], tuple[Tensor, ...]] = field(default_factory=dict)  # replay: per-teacher [B, K]

    def outputs(self, batch: Batch, data_epoch: int, step: int) -> tuple[dict[str, Outputs], ...]:
        """The teachers' outputs (default view, logits only) for training batch ``step`` of data epoch
        ``data_epoch`` (already reduced modulo ``replay_epochs``)."""
        if self.kind == "sample":
            if self._table is None:
                self._table = self._precompute()
            self.stats.hits += batch.size
            logits = self._table[:, batch.index]  # [T, B, K]
            return tuple({DEFAULT_VIEW: Outputs(t)} for t in logits)
        key = (data_epoch, step)
        cached = self._batches.get(key)
        if cached is None:
            fresh = self.compute(batch)
            cached = tuple(t[DEFAULT_VIEW].logits for t in fresh)
            self._batches[key] = cached
            self.stats.misses += batch.size
            return tuple({DEFAULT_VIEW: Outputs(t[DEFAULT_VIEW].logits)} for t in fresh)
        self.stats.hits += batch.size
        return tuple({DEFAULT_VIEW: Outputs(logits)} for logits in cached)

    def _precompute(self) -> Tensor:
        assert self.train_batches is not None
        table = None
        filled = 0
        for batch in self.train_batches():
            logits = torch.stack([t[DEFAULT_VIEW].logits.float() for t in self.compute(batch)])  # [T, B, K]
            if table is None:
                table = logits.new_zeros(logits.shape[0], self.num_train, logits.shape[2])
            table[:, batch.index] = logits
            filled += batch.size
        if table is None or filled != self.num_train:
            raise RuntimeError(f"teacher cache: the training split gave {filled} samples, expected {self.num_train}")
        self.stats.precomputed = filled
        log.info(
            "teacher cache: %d teacher logits of %d samples precomputed (%.1f MB)",
            table.shape[0],
            filled,
            table.numel() * table.element_size() / 2**20,
        )
        return table

    def record(self) -> dict[str, object]:
        """What the cache did, for the run record."""
        stored = (
            0
            if self.kind == "sample" and self._table is None
            else (
                self._table.numel() * self._table.element_size()
                if self.kind == "sample"
                else sum(t.numel() * t.element_size() for v in self._batches.values() for t in v)
            )
        )
        return {
            "kind": self.kind,
            "hits": self.stats.hits,
            "misses": self.stats.misses,
            "precomputed": self.stats.precomputed,
            "bytes": int(stored),
        }


def build_teacher_cache(cfg: object, run: object, compute: TeacherFn, prepare: Callable[[Batch], Batch]) -> tuple:
    """The cache of a built run, or None; returns ``(cache, reason)``.

    Args:
        cfg: the run's config (``train.teacher_cache``, ``train.replay_epochs``, ``data.augment``, ``method.name``).
        run: the built run (:class:`kdlab.train.build.Run`: needs, teachers, data).
        compute: the trainer's teacher forward.
        prepare: converts a batch to the run's memory format.
    """
    kind, reason = cache_plan(
        cfg.train.teacher_cache,
        run.needs,
        len(run.teachers),
        cfg.data.augment,
        cfg.train.replay_epochs,
        cfg.method.name,
        random_view_augmentations(cfg.data),
    )
    if kind == "off":
        return None, reason

    def train_split() -> Iterator[Batch]:
        return (prepare(b) for b in run.data.eval_batches("train"))

    log.info("teacher cache: %s (%s)", kind, reason)
    return TeacherCache(kind, compute, train_split, run.data.num_train), reason
