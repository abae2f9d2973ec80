"""The on-device loader: exact batch-wise augmentation, deterministic order, indices, held-out split."""

from __future__ import annotations

import torch

from kdlab.config import DataConfig
from kdlab.data import load_dataset
from kdlab.data.loader import DeviceLoader, random_crop, random_flip


def _loader(seed=0, **kw):
    cfg = DataConfig(name="synthetic", num_classes=5, image_size=8, train_size=100, test_size=30, batch_size=16, **kw)
    return DeviceLoader(load_dataset(cfg), cfg, torch.device("cpu"), seed)


def test_random_crop_equals_per_sample_pad_and_slice():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    g = torch.Generator().manual_seed(3)
    out = random_crop(x, 2, g)
    g = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 5, (6,), generator=g)
    dx = torch.randint(0, 5, (6,), generator=g)
    for i in range(6):
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))  # zeros, as RandomCrop(padding=4) on a PIL image
        assert torch.equal(out[i], padded[:, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8])


def test_random_flip_flips_exactly_the_drawn_samples():
    x = torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.uint8)
    out = random_flip(x, torch.Generator().manual_seed(1))
    flipped = torch.rand(64, generator=torch.Generator().manual_seed(1)) < 0.5
    assert torch.equal(out[flipped], x[flipped].flip(3)) and torch.equal(out[~flipped], x[~flipped])
    assert 10 < int(flipped.sum()) < 54


def test_epoch_covers_every_sample_once_with_matching_labels():
    loader = _loader(augment="none")
    seen = []
    for batch in loader.train_batches(0):
        seen.append(batch.index)
        assert torch.equal(batch.y, loader.train.y[batch.index])
        assert torch.allclose(batch.x, loader.normalize(loader.train.x[batch.index]))
    seen = torch.cat(seen)
    assert sorted(seen.tolist()) == list(range(loader.num_train))
    assert loader.steps_per_epoch() == 7  # ceil(100 / 16)


def test_normalisation_uses_dataset_mean_and_std():
    loader = _loader()
    x = torch.full((1, 3, 2, 2), 128, dtype=torch.uint8)
    mean, std = loader.mean.view(-1), loader.std.view(-1)
    expected = (128 / 255 - mean) / std
    assert torch.allclose(loader.normalize(x)[0, :, 0, 0], expected, atol=1e-6)


def test_order_and_augmentation_are_functions_of_seed_epoch_step():
    a, b, c = _loader(seed=1), _loader(seed=1), _loader(seed=2)
    batches_a = list(a.train_batches(3))
    batches_b = list(b.train_batches(3))
    assert all(torch.equal(p.x, q.x) and torch.equal(p.index, q.index) for p, q in zip(batches_a, batches_b))
    assert not torch.equal(next(c.train_batches(3)).index, batches_a[0].index)
    assert not torch.equal(next(a.train_batches(4)).index, batches_a[0].index)
    # resuming mid-epoch replays exactly the remaining batches
    tail = list(a.train_batches(3, start_step=4))
    assert len(tail) == 3
    assert all(torch.equal(p.x, q.x) for p, q in zip(tail, batches_a[4:]))


def test_validation_split_is_held_out_of_training():
    loader = _loader(val_fraction=0.2)
    assert loader.num_train == 80 and loader.val is not None and loader.val.y.shape[0] == 20
    train_rows = {tuple(r.flatten().tolist()) for r in loader.train.x}
    val_rows = {tuple(r.flatten().tolist()) for r in loader.val.x}
    assert not train_rows & val_rows
    assert torch.bincount(loader.val.y, minlength=5).min() >= 1  # stratified
    assert sum(b.size for b in loader.eval_batches("test")) == 30  # the test split is untouched
