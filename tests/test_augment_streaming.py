"""The per-sample augmentations on the streamed (ImageNet) path: RandAugment and colour jitter in the decoding
workers (the batched ops on one image, drawn from the sample's own generator), random erasing and Mixup/CutMix on
the device; batches stay a pure function of (seed, epoch, step) for resume, and evaluation is untouched."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from test_data_imagenet import CPU, _cfg, folder  # noqa: F401  (the module-scoped image folder fixture)

from kdlab.augment_config import RandAugmentConfig, RandomErasingConfig
from kdlab.data import load_dataset, make_loader
from kdlab.data.augment import BatchAugment
from kdlab.data.streaming import ImageTransform

AUG = dict(
    rand_augment=RandAugmentConfig(magnitude=9.0, magnitude_std=0.5),
    color_jitter=0.4,
    random_erasing=RandomErasingConfig(probability=0.5),
)


def test_worker_transform_is_the_batched_ops_on_the_crop(folder):  # noqa: F811
    """ImageTransform with ops = crop and flip, then ``BatchAugment.uint8_stage`` on that one image with a generator
    seeded from the sample's rng (the draws after the crop's and flip's)."""
    img = Image.open(next((folder / "train" / "n01").glob("*.JPEG"))).convert("RGB")
    ops = BatchAugment(AUG["rand_augment"], 0.4, None, (124.0, 116.0, 104.0))
    plain = ImageTransform(24, 28, (0.08, 1.0), train=True)
    with_ops = ImageTransform(24, 28, (0.08, 1.0), train=True, ops=ops)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        crop = plain(img, rng)
        g = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        expected = ops.uint8_stage(torch.from_numpy(crop.copy()).permute(2, 0, 1)[None], g)[0].permute(1, 2, 0)
        got = with_ops(img, np.random.default_rng(seed))
        assert got.dtype == np.uint8 and np.array_equal(got, expected.numpy())
    evaluation = ImageTransform(24, 28, (0.08, 1.0), train=False, ops=ops)
    assert evaluation.ops is None


def test_streamed_batches_with_augmentations_and_mixing_replay(folder):  # noqa: F811
    cfg = _cfg(folder, mixup_alpha=0.8, cutmix_alpha=1.0, **AUG)
    plain_cfg = _cfg(folder)
    splits = load_dataset(cfg)
    loader = make_loader(splits, cfg, CPU, seed=0)
    full = list(loader.train_batches(1))
    assert all(b.y_soft is not None and b.y_soft.shape == (b.size, 3) for b in full)
    assert torch.allclose(full[0].y_soft.sum(dim=1), torch.ones(full[0].size))
    resumed = list(make_loader(splits, cfg, CPU, seed=0).train_batches(1, start_step=2))
    for a, b in zip(full[2:], resumed):
        assert torch.equal(a.x, b.x) and torch.equal(a.y_soft, b.y_soft) and torch.equal(a.y, b.y)
    plain = list(make_loader(splits, plain_cfg, CPU, seed=0).train_batches(1))
    assert [b.index.tolist() for b in plain] == [b.index.tolist() for b in full]  # same order, other images
    assert not torch.equal(plain[0].x, full[0].x)
    ev = [b.x for b in make_loader(splits, cfg, CPU, seed=0).eval_batches("test")]
    ev_plain = [b.x for b in make_loader(splits, plain_cfg, CPU, seed=0).eval_batches("test")]
    assert all(torch.equal(a, b) for a, b in zip(ev, ev_plain))
