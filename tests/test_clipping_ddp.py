"""Gradient clipping (``train.clip_grad_norm``) under several processes (2 gloo ranks on CPU, spawned by the test):
DDP has averaged the gradients before the trainer clips them, so every rank measures the same global norm, clips by
the same factor and keeps the same weights. The fast siblings (the clipping golden tests and the logged run) are in
``tests/test_strategy_regularization.py``."""

from __future__ import annotations

import gc
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from kdlab.train.trainer import Trainer

from conftest import tiny_config

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, port: int, out: str) -> None:
    """Each spawned rank: torchrun's environment, one thread, a gloo group, one clipped run, its results saved."""
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank)}
    )
    os.environ["WORLD_SIZE"] = str(WORLD)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    trainer = Trainer(tiny_config(Path(out), "train.clip_grad_norm=0.01", "train.epochs=1", "train.name=clip"))
    trainer.fit()
    state = {k: v.clone() for k, v in trainer.run.student.state_dict().items()}
    torch.save({"student": state, "train": trainer.history[-1]["train"]}, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    del trainer
    gc.collect()  # the run's DDP wrapper goes before its process group
    dist.destroy_process_group()


@pytest.mark.slow
def test_every_rank_clips_by_the_same_norm_and_keeps_the_same_weights(tmp_path):
    torch.multiprocessing.start_processes(
        _entry, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="spawn"
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    assert r0["train"]["grad_clipped"] == r1["train"]["grad_clipped"] == 1.0  # every step exceeded 0.01
    assert r0["train"]["grad_norm"] == r1["train"]["grad_norm"] > 0.01  # the same averaged gradients on both ranks
    assert r0["student"].keys() == r1["student"].keys()
    for k in r0["student"]:
        if "running" in k or "num_batches" in k:
            continue  # BatchNorm statistics are per rank (no SyncBatchNorm on CPU)
        assert torch.equal(r0["student"][k], r1["student"][k]), k
