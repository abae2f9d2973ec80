"""The outer loop's held-out stream (issue 22): taken in order and tracked in samples, so a training batch of another
size (an epoch's merged last batch) neither restarts nor repeats the pass, and a resume continues exactly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kdlab.methods.fusion import HypergradientStep
from kdlab.methods.heldout import HeldoutStream, slice_batch
from kdlab.types import Batch


def _split(n: int = 10, eval_batch: int = 8, tokens: bool = False):
    """``fn() -> endless held-out batches`` of ``n`` samples in evaluation batches of ``eval_batch``."""

    def batches():
        while True:
            for lo in range(0, n, eval_batch):
                idx = torch.arange(lo, min(lo + eval_batch, n))
                x = {"input_ids": idx[:, None].repeat(1, 3)} if tokens else idx[:, None].float()
                yield Batch(x=x, y=idx % 3, index=idx)

    return batches


def _outer_step() -> HypergradientStep:
    cfg = SimpleNamespace(meta_every=1, virtual_lr=None, meta_lr=1e-3, meta_weight_decay=0.0)
    return HypergradientStep(SimpleNamespace(cfg=cfg, ratio_net=nn.Linear(2, 1)))


def test_a_smaller_training_batch_takes_the_next_samples_instead_of_restarting_the_pass():
    step, ctx = _outer_step(), SimpleNamespace(heldout_batches=_split())
    # training batches of 4, then an epoch's last batch of 2, then 4 again (evaluation batches [0, 8) and [8, 10))
    got = [step._next_heldout(ctx, size).index.tolist() for size in (4, 2, 4, 4, 4, 2)]
    # before: the size change restarted the pass and skipped mini-batches of the new size ([2, 3] after [0..3])
    assert got == [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9], [0, 1, 2, 3], [4, 5]]
    assert step.heldout.position == 16 and step.heldout.pass_size == 10


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 6, 9])
def test_a_resumed_stream_continues_where_it_stopped(cut):
    sizes = [4, 2, 4, 3, 4, 4, 2, 4, 4, 1, 4]
    whole = HeldoutStream()
    expected = [whole.take(_split(), s).index.tolist() for s in sizes]
    first = HeldoutStream()
    got = [first.take(_split(), s).index.tolist() for s in sizes[:cut]]
    resumed = HeldoutStream()
    resumed.load_state_dict(first.state_dict())
    got += [resumed.take(_split(), s).index.tolist() for s in sizes[cut:]]
    assert got == expected


def test_the_outer_steps_checkpoint_state_round_trips():
    step, ctx = _outer_step(), SimpleNamespace(heldout_batches=_split())
    for size in (4, 4, 4):
        step._next_heldout(ctx, size)
    state = step.state_dict()
    assert state["heldout_position"] == 10 and state["heldout_pass"] == 0  # the pass has not been seen to end yet
    again = _outer_step()
    again.load_state_dict(state)
    assert again._next_heldout(ctx, 4).index.tolist() == [0, 1, 2, 3]
    assert again.heldout.pass_size == 10


def test_token_batches_are_cut_field_by_field():
    stream = HeldoutStream()
    chunk = stream.take(_split(tokens=True), 3)
    assert chunk.x["input_ids"].shape == (3, 3) and chunk.index.tolist() == [0, 1, 2]
    part = slice_batch(chunk, 1)
    assert part.x["input_ids"][:, 0].tolist() == [1, 2] and part.y.tolist() == [1, 2]
    with pytest.raises(ValueError, match="at least 1 sample"):
        stream.take(_split(), 0)


def test_the_token_loaders_heldout_split_is_read_in_a_seeded_mixed_order():
    import numpy as np

    from kdlab.config import DataConfig
    from kdlab.data.split import stratified_split
    from kdlab.data.tokens import TokenLoader, TokenSet, TokenSplits

    n, k = 160, 4
    y = torch.arange(k).repeat_interleave(n // k)  # class-sorted rows, like a CSV sorted by label
    ids = np.arange(n, dtype=np.int64)[:, None].repeat(2, axis=1)
    splits = TokenSplits("sorted", TokenSet(ids, y), TokenSet(ids[:8], y[:8]), num_classes=k, vocab_size=n, seq_len=2)
    cfg = DataConfig(name="sorted", eval_batch_size=8, split_seed=3)
    data = TokenLoader(splits, cfg, torch.device("cpu"), seed=0, holdout_fraction=0.2)
    rows = torch.cat([b.x[:, 0] for b in data.eval_batches("val")])
    _, val_idx = stratified_split(y, 0.2, 3)
    assert sorted(rows.tolist()) == val_idx.tolist()  # the same held-out rows ...
    # ... in a mixed order: before, each held-out batch of 8 was one class
    assert all(len(set(b.y.tolist())) > 1 for b in data.eval_batches("val"))
    again = TokenLoader(splits, cfg, torch.device("cpu"), seed=1, holdout_fraction=0.2)
    assert torch.equal(torch.cat([b.x[:, 0] for b in again.eval_batches("val")]), rows)  # fixed by split_seed
