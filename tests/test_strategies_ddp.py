"""The student EMA under several processes (2 gloo ranks on CPU, spawned by the test): every rank's average is the same
(parameters from the synchronised weights, BatchNorm buffers rank 0's before each evaluation), the logged EMA
accuracy agrees across ranks, the checkpoint holds rank 0's average, and a run stopped mid-epoch resumes to the
uninterrupted run's average exactly. A fast single-process sibling checks the evaluation's broadcast hook."""

from __future__ import annotations

import gc
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from kdlab.train.checkpoint import read_file
from kdlab.train.trainer import Trainer, TrainingInterrupted

from conftest import sigterm_during_step, tiny_config

WORLD = 2
EMA = ["train.ema_decay=0.5", "train.ema_warmup=tf", "train.ema_export=true", "train.epochs=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, port: int, out: str) -> None:
    """Each spawned rank: torchrun's environment, one thread, a gloo group, then :func:`_work`."""
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank)}
    )
    os.environ["WORLD_SIZE"] = str(WORLD)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    _work(rank, Path(out))  # a failure ends this process: the launcher reports it (no barrier to hang in)
    dist.barrier()  # no rank leaves while another still talks to it
    gc.collect()  # the runs' DDP wrappers go before their process group
    dist.destroy_process_group()


def _ema_state(trainer: Trainer) -> dict:
    return {k: v.clone() for k, v in trainer.ema.module.state_dict().items() if torch.is_tensor(v)}


def _work(rank: int, out: Path) -> None:
    """Rank ``rank``: an uninterrupted run (2 epochs of 6 steps), the same run stopped by a SIGTERM that reaches rank 1
    during its 8th step, and its resumption; what each ended with is saved per rank."""
    cfg = lambda name: tiny_config(out, *EMA, f"train.name={name}", method="kd")  # noqa: E731
    full = Trainer(cfg("full"))
    full.fit()
    cut = Trainer(cfg("cut"))
    if rank == 1:
        sigterm_during_step(cut, 8)
    try:
        cut.fit()
    except TrainingInterrupted:
        pass
    dist.barrier()  # rank 0 has written the checkpoint (a resumption under torchrun is a new launch)
    resumed = Trainer(cfg("cut"), resume=True)
    resumed.fit()
    torch.save(
        {
            "full_ema": _ema_state(full),
            "full_history": full.history,
            "resumed_ema": _ema_state(resumed),
            "cut_steps": cut.global_step,
        },
        out / f"rank{rank}.pt",
    )


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ema_ddp")
    torch.multiprocessing.start_processes(
        _entry, args=(_free_port(), str(out)), nprocs=WORLD, join=True, start_method="spawn"
    )
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)], out


def _equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_ema_is_the_same_on_every_rank_and_in_the_checkpoint(ranks):
    (r0, r1), out = ranks
    _equal(r0["full_ema"], r1["full_ema"])  # parameters synchronised, buffers broadcast before the last evaluation
    assert [h["test"]["ema_top1"] for h in r0["full_history"]] == [h["test"]["ema_top1"] for h in r1["full_history"]]
    ckpt = read_file(out / "runs" / "full" / "checkpoint.pt")
    _equal({k.removeprefix("module."): v for k, v in ckpt["ema"].items() if torch.is_tensor(v)}, r0["full_ema"])
    exported = read_file(out / "runs" / "full" / "student.pt")["state_dict"]
    _equal(exported, r0["full_ema"])


@pytest.mark.slow
def test_ema_resumes_bitwise_under_two_processes(ranks):
    (r0, r1), _ = ranks
    # rank 1's stop request (during its 8th step) is shared at the next sync: both stop after step 9 (epoch 2, 3 of 6)
    assert r0["cut_steps"] == r1["cut_steps"] == 9
    _equal(r0["resumed_ema"], r0["full_ema"])
    _equal(r1["resumed_ema"], r1["full_ema"])


def test_ema_evaluation_takes_rank_zeros_buffers_first(tmp_path, monkeypatch):
    """Fast sibling: the EMA is evaluated only after its buffers were broadcast from rank 0 (a no-op alone)."""
    import kdlab.train.ema as ema_module

    trainer = Trainer(tiny_config(tmp_path, "train.ema_decay=0.9", "train.max_steps=2"))
    events = []
    real = ema_module.broadcast_buffers

    def spy(module, skip=()):
        events.append(("broadcast", module))
        return real(module, skip)

    monkeypatch.setattr(ema_module, "broadcast_buffers", spy)
    trainer.evaluate("test")
    assert events == [("broadcast", trainer.ema.module)]
    trainer.lock.release()
