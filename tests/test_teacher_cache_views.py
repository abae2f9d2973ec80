"""The teacher-output cache under DIST's strategy augmentations (issue 18, "Big teachers"): RandAugment, colour
jitter, random erasing, Mixup and CutMix give every sample a new teacher input each step, so the cache refuses
(``on``) or explains and runs without it (``auto``), even with ``data.augment=none`` or replayed epochs."""

from __future__ import annotations

import pytest

from kdlab.config import ConfigError, build_config
from kdlab.train.teacher_cache import cache_plan, random_view_augmentations
from kdlab.train.trainer import Trainer
from kdlab.types import Needs

from conftest import tiny_config


def _data(*overrides: str):
    return build_config({}, list(overrides)).data


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ((), []),
        (("data.mixup_alpha=0.8",), ["data.mixup_alpha=0.8"]),
        (("data.cutmix_alpha=1.0", "data.color_jitter=0.4"), ["data.color_jitter=0.4", "data.cutmix_alpha=1"]),
        (("data.rand_augment={}",), ["data.rand_augment"]),
        (("data.random_erasing={}",), ["data.random_erasing"]),
    ],
)
def test_random_view_augmentations_lists_what_is_on(overrides, expected) -> None:
    assert random_view_augmentations(_data(*overrides)) == expected


@pytest.mark.parametrize(("augment", "replay"), [("none", 0), ("crop_flip", 2)])
def test_cache_refuses_per_step_random_views(augment: str, replay: int) -> None:
    """Where the cache would otherwise apply (no augmentation: per sample; replayed epochs), a per-step random view
    rules it out: ``on`` names the setting and the cheaper alternative, ``auto`` turns the cache off with the reason."""
    needs = Needs()
    kind, _ = cache_plan("on", needs, 1, augment, replay, "kd")
    assert kind in ("sample", "replay")
    views = ["data.mixup_alpha=0.8", "data.cutmix_alpha=1"]
    with pytest.raises(
        ConfigError,
        match=r"train\.teacher_cache=on: data\.mixup_alpha=0\.8, data\.cutmix_alpha=1 .*"
        r"teacher_precision=bf16",
    ):
        cache_plan("on", needs, 1, augment, replay, "kd", views)
    kind, reason = cache_plan("auto", needs, 1, augment, replay, "kd", views)
    assert kind == "off" and "data.mixup_alpha=0.8" in reason


def test_trainer_refuses_cache_under_mixup(tmp_path) -> None:
    """Through the trainer's build: ``train.teacher_cache=on`` with Mixup is a ConfigError (CLI exit 2) naming it."""
    cfg = tiny_config(tmp_path, "data.augment=none", "data.mixup_alpha=0.8", "train.teacher_cache=on", method="kd")
    with pytest.raises(ConfigError, match=r"train\.teacher_cache=on: data\.mixup_alpha=0\.8"):
        Trainer(cfg)
