"""Config sections of the per-sample training augmentations (``data.rand_augment``, ``data.random_erasing``).

A separate module so that :mod:`kdlab.config` imports it without the data layer; the ops themselves live in
:mod:`kdlab.data.augment` (RandAugment, colour jitter, random erasing) and :mod:`kdlab.data.augment_mix`
(Mixup/CutMix). The field names follow timm's training recipes: ``rand-m9-mstd0.5`` is
``data.rand_augment: {num_ops: 2, magnitude: 9, magnitude_std: 0.5}``; ``--reprob 0.2 --remode pixel`` is
``data.random_erasing: {probability: 0.2, mode: pixel}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kdlab.ranges import rng

#: ``magnitude_std`` at or above this draws the magnitude uniformly from ``[0, magnitude]`` (timm's ``mstd > 100``).
UNIFORM_MAGNITUDE_STD = 100.0


@dataclass(kw_only=True)
class RandAugmentConfig:
    """RandAugment in timm's form (``timm.data.rand_augment_transform``): per image, ``num_ops`` ops drawn uniformly
    (with replacement) from 15, each applied with ``probability`` at a magnitude drawn per image and op."""

    num_ops: int = field(default=2, metadata=rng(ge=1))
    """Ops per image (timm's ``n``, default 2)."""
    magnitude: float = field(default=9.0, metadata=rng(ge=0, le=10))
    """Magnitude on timm's 0..10 scale (``m``; DIST's B2/B3 strategies use 9)."""
    magnitude_std: float = field(
        default=0.5, metadata=rng(ge=0, note=f">= {UNIFORM_MAGNITUDE_STD:g} draws uniformly from [0, magnitude]")
    )
    """``mstd``: each op's magnitude is drawn from N(magnitude, magnitude_std) and clipped to [0, 10]; 0 keeps it
    fixed; >= 100 draws it uniformly from [0, magnitude] (timm's ``mstd101``)."""
    probability: float = field(default=0.5, metadata=rng(ge=0, le=1))
    """Probability that each drawn op is applied (timm's ``p``, default 0.5)."""


@dataclass(kw_only=True)
class RandomErasingConfig:
    """Random erasing as timm's ``RandomErasing`` (one box per image, after normalisation)."""

    probability: float = field(default=0.25, metadata=rng(ge=0, le=1))
    """Probability that an image gets a box (timm's ``--reprob``: 0.25 in DeiT's recipe, 0.2 in timm's EfficientNet
    recipes)."""
    mode: Literal["pixel", "rand", "const"] = "pixel"
    """Box content: ``pixel`` per-pixel N(0, 1) noise in normalised units, ``rand`` one N(0, 1) colour per box and
    channel, ``const`` zeros (the dataset mean)."""
    min_area: float = field(default=0.02, metadata=rng(gt=0, le=1))
    """Smallest box area as a fraction of the image."""
    max_area: float = field(default=1.0 / 3.0, metadata=rng(gt=0, le=1))
    """Largest box area as a fraction of the image."""
    min_aspect: float = field(default=0.3, metadata=rng(gt=0))
    """Smallest box aspect ratio (height / width, drawn log-uniformly)."""
    max_aspect: float | None = field(default=None, metadata=rng(gt=0))
    """Largest aspect ratio (None: ``1 / min_aspect``)."""

    def __post_init__(self) -> None:
        if self.min_area > self.max_area:
            raise ValueError(
                f"min_area={self.min_area:g} is above max_area={self.max_area:g}; the box area is drawn from "
                "[min_area, max_area], e.g. min_area: 0.02, max_area: 0.333"
            )
        max_aspect = self.max_aspect if self.max_aspect is not None else 1.0 / self.min_aspect
        if self.min_aspect > max_aspect:
            raise ValueError(
                f"min_aspect={self.min_aspect:g} is above max_aspect={max_aspect:g}; the aspect ratio is drawn from "
                "[min_aspect, max_aspect] (max_aspect: null means 1 / min_aspect)"
            )
