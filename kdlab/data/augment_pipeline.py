"""The per-sample augmentations and Mixup/CutMix as the training loaders apply them (one object per loader).

Order, as timm's ImageNet training transform followed by its ``Mixup``: crop and flip (the loader), RandAugment and
colour jitter on uint8 (:meth:`TrainAugment.images`), normalisation (the loader), random erasing on the normalised
images (:meth:`TrainAugment.erase`), then Mixup/CutMix of the whole (global) batch (:meth:`TrainAugment.mix`), which
sets ``Batch.y_soft`` and makes ``Batch.y`` the dominant label.

Randomness: the per-image draws come from the loader's generator of the step (in-memory data) or of the sample
(streamed data: RandAugment and colour jitter run in the decoding workers, per sample); the mixing of a batch from a
numpy generator seeded by ``(seed, epoch, step)``, the same in every process of a distributed run (one lambda and box
for the global batch, as one process would draw). The trainer knows none of this: it receives batches, some with
``y_soft``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from kdlab.config import ConfigError
from kdlab.data.augment import BatchAugment
from kdlab.data.augment_mix import MixSettings, draw_mix, draw_mix_elem, mix_batch, mix_batch_elem
from kdlab.seeding import derive_seed
from kdlab.types import Batch

#: ``derive_seed`` stream of the per-batch mixing draws (1 epoch order, 2 in-memory augmentation, 3/4 streamed
#: samples and strong view, 5 streamed random erasing).
MIX_STREAM = 6
ERASE_STREAM = 5


def image_augment_settings(cfg) -> list[str]:
    """The ``data.*`` keys of per-sample image augmentation that ``cfg`` turns on (empty when none is)."""
    on = []
    if cfg.rand_augment is not None:
        on.append("data.rand_augment")
    if cfg.color_jitter > 0:
        on.append("data.color_jitter")
    if cfg.random_erasing is not None and cfg.random_erasing.probability > 0:
        on.append("data.random_erasing")
    if cfg.mixup_alpha > 0 and cfg.mix_prob > 0:
        on.append("data.mixup_alpha")
    if cfg.cutmix_alpha > 0 and cfg.mix_prob > 0:
        on.append("data.cutmix_alpha")
    return on


def refuse_for_non_images(cfg, what: str) -> None:
    """Raise a :class:`ConfigError` when image augmentations are set for data that has no images (``what``)."""
    on = image_augment_settings(cfg)
    if on:
        raise ConfigError(
            f"{', '.join(on)} augment images, but data.name={cfg.name} is {what}; remove "
            f"{'it' if len(on) == 1 else 'them'} from the config"
        )


def mixes_labels(cfg) -> bool:
    """Whether a run with data config ``cfg`` trains on mixed (soft) labels (Mixup or CutMix on)."""
    return MixSettings.from_config(cfg).active


def label_mixing_settings(cfg) -> list[str]:
    """The settings of data config ``cfg`` that mix labels, as ``key=value`` (empty when labels are not mixed), e.g.
    ``["data.mixup_alpha=0.8", "data.cutmix_alpha=1"]``: what a build error names (the trainer knows no keys)."""
    if not mixes_labels(cfg):
        return []
    return [f"data.{k}={getattr(cfg, k):g}" for k in ("mixup_alpha", "cutmix_alpha") if getattr(cfg, k) > 0]


def describe_augment(cfg, mixed_labels: str | None = None) -> str:
    """One line of the run header for the per-sample augmentations of data config ``cfg`` (empty when none is on),
    e.g. ``RandAugment n2 m9 mstd0.5 p0.5, colour jitter 0.4, random erasing p0.25 pixel, Mixup 0.8 / CutMix 1
    (switch 0.5, prob 1, one lambda per batch); cross-entropy on the mixed labels``."""
    parts = []
    ra = cfg.rand_augment
    if ra is not None:
        parts.append(f"RandAugment n{ra.num_ops} m{ra.magnitude:g} mstd{ra.magnitude_std:g} p{ra.probability:g}")
    if cfg.color_jitter > 0:
        parts.append(f"colour jitter {cfg.color_jitter:g}")
    re_cfg = cfg.random_erasing
    if re_cfg is not None and re_cfg.probability > 0:
        parts.append(f"random erasing p{re_cfg.probability:g} {re_cfg.mode}")
    mix = MixSettings.from_config(cfg)
    if mix.active:
        ops = [f"Mixup {mix.mixup_alpha:g}"] * (mix.mixup_alpha > 0) + [f"CutMix {mix.cutmix_alpha:g}"] * (
            mix.cutmix_alpha > 0
        )
        switch = f"switch {mix.switch_prob:g}, " if len(ops) == 2 else ""
        per = "one lambda per batch" if mix.mode == "batch" else "lambda per image"
        line = f"{' / '.join(ops)} ({switch}prob {mix.mix_prob:g}, {per})"
        how = {"soft": "; cross-entropy on the mixed labels", "dominant": "; cross-entropy on the mixed labels, the "
               "dominant label where the method needs a hard one"}.get(mixed_labels or "", "")  # fmt: skip
        parts.append(line + how)
    return ", ".join(parts)


class TrainAugment:
    """The per-sample augmentations and the mixing a :class:`~kdlab.config.DataConfig` asks for.

    Args:
        cfg: the data config.
        mean: the dataset's per-channel mean in [0, 1] (the fill of RandAugment's geometric ops).
        num_classes: ``K`` (width of ``Batch.y_soft``).
        seed: the run's seed (mixing draws).
    """

    def __init__(self, cfg, mean: tuple[float, ...], num_classes: int, seed: int) -> None:
        self.ops = BatchAugment.from_config(cfg, mean)
        self.mix_settings = MixSettings.from_config(cfg)
        self.num_classes = num_classes
        self.seed = seed

    @property
    def mixing(self) -> bool:
        """Whether batches carry mixed labels."""
        return self.mix_settings.active

    def images(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """RandAugment and colour jitter of ``[B, C, H, W]`` uint8 (no draws when both are off)."""
        return self.ops.uint8_stage(x, generator) if self.ops.uint8_active else x

    def erase(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Random erasing of normalised ``[B, C, H, W]`` float images (in place; no draws when off)."""
        return self.ops.float_stage(x, generator)

    def mix(self, batch: Batch, epoch: int, step: int) -> Batch:
        """Mixup/CutMix of a whole training batch (all views alike); the batch itself when mixing is off."""
        if not self.mixing:
            return batch
        rng = np.random.default_rng(derive_seed(self.seed, epoch, step, MIX_STREAM))
        h, w = (int(v) for v in batch.x.shape[-2:])
        if self.mix_settings.mode == "elem":
            elem = draw_mix_elem(self.mix_settings, rng, batch.size, h, w)
            x, y_soft, y, views = mix_batch_elem(batch.x, batch.y, self.num_classes, elem, dict(batch.views))
        else:
            params = draw_mix(self.mix_settings, rng, h, w)
            x, y_soft, y, views = mix_batch(batch.x, batch.y, self.num_classes, params, dict(batch.views))
        return dataclasses.replace(batch, x=x, y=y, views=views, y_soft=y_soft)


def take(batch: Batch, part: slice) -> Batch:
    """Samples ``part`` of every per-sample field of an image batch (``x``, ``y``, ``index``, views, ``y_soft``)."""
    if part == slice(None):
        return batch
    views = {k: v[part] for k, v in batch.views.items()}
    y_soft = None if batch.y_soft is None else batch.y_soft[part]
    return Batch(x=batch.x[part], y=batch.y[part], index=batch.index[part], views=views, y_soft=y_soft)
