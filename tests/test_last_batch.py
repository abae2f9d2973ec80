"""The one last-batch rule of every training loader (issue 22): a last partial batch smaller than
``data.last_batch_min_fraction`` of the batch (1/8) is merged into the previous batch; larger ones stay (CIFAR's
50000 % 64 = 16); ``data.drop_last`` drops any; the plan is a function of the config, so a resume replays it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlab.config import DataConfig
from kdlab.data import load_dataset
from kdlab.data.base import FileSet, StreamingSplits
from kdlab.data.loader import DeviceLoader
from kdlab.data.streaming import StreamingLoader
from kdlab.data.tokens import TokenLoader, TokenSet, TokenSplits

CPU = torch.device("cpu")


def _device_loader(n: int, batch: int = 64, **kw) -> DeviceLoader:
    cfg = DataConfig(name="synthetic", num_classes=5, image_size=4, train_size=n, test_size=10, batch_size=batch, **kw)
    return DeviceLoader(load_dataset(cfg), cfg, CPU, seed=3)


def _token_loader(n: int, batch: int = 64, **kw) -> TokenLoader:
    cfg = DataConfig(name="synthetic", batch_size=batch, **kw)
    ids = np.arange(n * 3, dtype=np.int64).reshape(n, 3)
    train = TokenSet(ids=ids, y=torch.arange(n) % 4)
    test = TokenSet(ids=ids[:4], y=torch.arange(4) % 4)
    splits = TokenSplits(name="toy", train=train, test=test, num_classes=4, vocab_size=3 * n, seq_len=3)
    return TokenLoader(splits, cfg, CPU, seed=3)


def _streaming_loader(n: int, batch: int = 64, **kw) -> StreamingLoader:
    cfg = DataConfig(name="imagefolder", batch_size=batch, workers=0, **kw)
    files = FileSet(root=".", paths=np.array([f"{i}.jpg" for i in range(n)], dtype=np.bytes_), y=torch.arange(n) % 4)
    splits = StreamingSplits(name="toy", train=files, test=files, num_classes=4, mean=(0.5,) * 3, std=(0.5,) * 3)
    return StreamingLoader(splits, cfg, CPU, seed=3)


def _sizes(loader, epoch: int = 0) -> list[int]:
    if isinstance(loader, StreamingLoader):  # no files to decode: the plan is step_indices
        return [int(loader.step_indices(epoch, s).shape[0]) for s in range(loader.steps_per_epoch())]
    return [batch.size for batch in loader.train_batches(epoch)]


def _indices(loader, epoch: int = 0) -> list[int]:
    if isinstance(loader, StreamingLoader):
        return torch.cat([loader.step_indices(epoch, s) for s in range(loader.steps_per_epoch())]).tolist()
    return torch.cat([batch.index.cpu() for batch in loader.train_batches(epoch)]).tolist()


LOADERS = {"device": _device_loader, "tokens": _token_loader, "streaming": _streaming_loader}


@pytest.mark.parametrize("kind", LOADERS)
def test_a_two_sample_remainder_is_merged_into_the_previous_batch(kind):
    # the held-out split of 500 CIFAR-10 images leaves 450 = 7 x 64 + 2: before the rule, 8 steps, the last of 2
    loader = LOADERS[kind](450)
    assert loader.merges_last_batch()
    assert loader.steps_per_epoch() == 7
    assert _sizes(loader) == [64] * 6 + [66]
    assert sorted(_indices(loader, epoch=2)) == list(range(450))  # every sample once per epoch


@pytest.mark.parametrize("kind", LOADERS)
def test_the_references_16_sample_remainder_stays_a_batch(kind):
    # CIFAR's 50000 % 64 = 16 (a quarter of the batch): the reference setting is kept as it is
    loader = LOADERS[kind](7 * 64 + 16)
    assert not loader.merges_last_batch()
    assert _sizes(loader) == [64] * 7 + [16]


@pytest.mark.parametrize("kind", LOADERS)
def test_the_threshold_is_strict_and_configurable(kind):
    assert _sizes(LOADERS[kind](7 * 64 + 7)) == [64] * 6 + [71]  # 7 < 64 / 8: merged
    assert _sizes(LOADERS[kind](7 * 64 + 8)) == [64] * 7 + [8]  # 8 = 64 / 8: kept
    assert _sizes(LOADERS[kind](450, last_batch_min_fraction=0.0)) == [64] * 7 + [2]  # 0: every batch kept
    assert _sizes(LOADERS[kind](7 * 64 + 16, last_batch_min_fraction=0.5)) == [64] * 6 + [80]
    assert _sizes(LOADERS[kind](450, drop_last=True)) == [64] * 7  # drop_last drops whatever the size


@pytest.mark.parametrize("kind", LOADERS)
def test_fewer_samples_than_one_batch_and_exact_multiples_are_untouched(kind):
    assert _sizes(LOADERS[kind](5)) == [5]  # nothing to merge into
    assert _sizes(LOADERS[kind](128)) == [64, 64]


def test_a_resumed_epoch_replays_the_merged_batch():
    loader = _device_loader(450)
    whole = list(loader.train_batches(4))
    tail = list(_device_loader(450).train_batches(4, start_step=5))
    for a, b in zip(whole[5:], tail, strict=True):
        assert torch.equal(a.index, b.index) and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert tail[-1].size == 66


def test_a_merged_batch_is_sharded_like_any_batch():
    # 81 = 5 x 16 + 1: merged into a 17-sample batch, trimmed to 16 for 2 processes, 8 per rank
    one = _device_loader(81, batch=16)
    a, b = _device_loader(81, batch=16), _device_loader(81, batch=16)
    a.shard(0, 2)
    b.shard(1, 2)
    assert one.steps_per_epoch() == a.steps_per_epoch() == 5
    assert _sizes(a) == _sizes(b) == [8] * 5
    last_a, last_b, last = list(a.train_batches(1))[-1], list(b.train_batches(1))[-1], list(one.train_batches(1))[-1]
    assert last.size == 17 and torch.equal(torch.cat([last_a.index, last_b.index]), last.index[:16])


def test_the_trainer_runs_the_merged_plan(tmp_path):
    from kdlab.train.trainer import Trainer

    from conftest import tiny_config

    cfg = tiny_config(tmp_path, "data.train_size=97", "train.epochs=1")  # 97 = 6 x 16 + 1
    trainer = Trainer(cfg, force=True)
    assert trainer.steps_per_epoch == 6
    summary = trainer.fit()
    assert summary["steps"] == 6


def test_the_epochs_logged_means_are_per_sample(tmp_path):
    import json

    from kdlab.train.trainer import Trainer

    from conftest import tiny_config

    # 97 = 6 x 16 + 1 with the merge rule off: a 1-sample last batch
    cfg = tiny_config(tmp_path, "data.train_size=97", "data.last_batch_min_fraction=0", "train.epochs=1")
    trainer = Trainer(cfg, force=True)
    seen, call = [], trainer.step_call

    def recording(batch, teachers, progress):
        out = call(batch, teachers, progress)
        seen.append((float(out.total), batch.size))
        return out

    recording.status = call.status  # the run header reads it
    trainer.step_call = recording
    trainer.fit()
    assert [n for _, n in seen] == [16] * 6 + [1]
    logged = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[0])["train"]["loss"]
    per_sample = sum(v * n for v, n in seen) / 97
    per_step = sum(v for v, _ in seen) / 7  # before: the 1-sample batch weighed as much as a batch of 16
    assert logged == pytest.approx(per_sample, rel=1e-6) and abs(per_sample - per_step) > 1e-4
