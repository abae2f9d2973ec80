"""The teacher-output cache under DIST's strategy augmentations (issue 18, "Big teachers"): RandAugment, colour
jitter, random erasing, Mixup and CutMix give every sample a new teacher input each step, so the per-sample cache
refuses (``on``) or explains and runs without it (``auto``), even with ``data.augment=none``; replayed epochs repeat
those views exactly, so the replay cache still applies."""

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


@pytest.mark.parametrize(("augment", "replay"), [("none", 0)])
def test_cache_refuses_per_step_random_views(augment: str, replay: int) -> None:
    """Where the per-sample cache would otherwise apply (no augmentation), a per-step random view rules it out:
    ``on`` names the setting and the cheaper alternatives, ``auto`` turns the cache off with the reason."""
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
    assert kind == "off" and "data.mixup_alpha=0.8" in reason and "train.replay_epochs" in reason


def test_replayed_epochs_repeat_random_views_so_the_replay_cache_applies() -> None:
    """The loader's RandAugment, random erasing, colour jitter and Mixup/CutMix draws are a function of (seed, data
    epoch, step): the batches of a data epoch come back bitwise (images and soft labels), another epoch differs, so
    ``train.replay_epochs`` keeps the replay cache exact under DIST's strategy augmentations."""
    import torch

    from kdlab.data import load_dataset
    from kdlab.data.loader import DeviceLoader

    views = ["data.rand_augment={}", "data.random_erasing={}", "data.color_jitter=0.4", "data.mixup_alpha=0.8"]
    raw = {"name": "synthetic", "num_classes": 5, "image_size": 16, "train_size": 40, "test_size": 10, "batch_size": 8}
    data = build_config({"data": raw}, [*views, "data.cutmix_alpha=1.0"]).data
    loader = DeviceLoader(load_dataset(data), data, torch.device("cpu"), seed=3)
    first, again, other = (list(loader.train_batches(e)) for e in (1, 1, 2))
    assert all(torch.equal(a.x, b.x) and torch.equal(a.y_soft, b.y_soft) for a, b in zip(first, again, strict=True))
    assert any(not torch.equal(a.x, b.x) for a, b in zip(first, other, strict=True))
    for augment in ("crop_flip", "none"):  # with data.augment=none too: a sample's input still differs per step
        kind, reason = cache_plan("on", Needs(), 1, augment, 2, "kd", random_view_augmentations(data))
        assert kind == "replay" and "train.replay_epochs=2" in reason


def test_trainer_refuses_cache_under_mixup(tmp_path) -> None:
    """Through the trainer's build: ``train.teacher_cache=on`` with Mixup is a ConfigError (CLI exit 2) naming it."""
    cfg = tiny_config(tmp_path, "data.augment=none", "data.mixup_alpha=0.8", "train.teacher_cache=on", method="kd")
    with pytest.raises(ConfigError, match=r"train\.teacher_cache=on: data\.mixup_alpha=0\.8"):
        Trainer(cfg)
