"""Detection training on 2 gloo processes (the harness of tests/test_distributed.py: spawned ranks on CPU).

A tiny RetinaNet distilled with the shipped KD recipe (configs/coco/kd) by two ranks, each on half of every global
batch, ends with the weights of one process at the global batch (up to float summation order), identical on both
ranks; the box mAP is gathered over the ranks' halves of the validation set; a run stopped by a SIGTERM reaching one
rank resumes to the bitwise state of the uninterrupted run.

Why this equivalence holds for RetinaNet (and is claimed only for it): torchvision's RetinaNet losses are means over
images of per-image terms (the focal loss and the box L1 of each image divided by that image's foreground count), KD on
per-anchor sigmoid scores is a mean over equally many anchors per image, the backbone's BatchNorm is frozen
(FrozenBatchNorm2d) and the FPN and heads have no normalisation: the mean of the two ranks' gradients (DDP) is the
gradient of the global batch. ``data.augment=none`` keeps the flips out (each rank draws its own). Faster R-CNN is
not equivalent: the RPN and the RoI head sample anchors and proposals at random, per rank. DIST on detection is not
either: its intra-class relation correlates the rows of each rank's own shard.
"""

from __future__ import annotations

import gc
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from kdlab.config import load_config
from kdlab.train.checkpoint import read_file
from kdlab.train.trainer import Trainer, TrainingInterrupted
from kdlab.types import Batch

from conftest import REPO, sigterm_during_step

WORLD = 2
RECIPE = REPO / "configs/coco/kd/retinanet_x101__retinanet_r50.yaml"


def _config(root: Path, runs: Path, name: str, *extra: str):
    return load_config(
        str(RECIPE),
        [
            f"data.root={root}",
            "model.student=retinanet_tiny",
            "model.student_backbone=null",
            "model.teachers.0.name=retinanet_tiny",
            "model.teachers.0.checkpoint=null",  # a random frozen teacher: the equivalence does not need a good one
            "data.min_size=64",
            "data.max_size=64",
            "data.augment=none",
            "data.batch_size=4",  # the global batch: 2 images per rank
            "data.eval_batch_size=2",
            "data.workers=0",
            "optim.warmup_steps=0",
            "optim.lr=0.02",
            "train.epochs=3",
            "train.eval_every=1",
            "train.device=cpu",
            "train.threads=1",
            "log.progress=off",
            f"train.run_dir={runs}",
            f"train.name={name}",
            *extra,
        ],
    )


def _state(trainer: Trainer) -> dict:
    return {
        "student": {k: v.clone() for k, v in trainer.run.student.state_dict().items()},
        "history": trainer.history,
        "steps": trainer.global_step,
    }


# ---------------------------------------------------------------------------------------------- workers (spawned)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, port: int, root: str, out: str) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank)}
    )
    os.environ["WORLD_SIZE"] = str(WORLD)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        _work(rank, Path(root), Path(out))
    finally:
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def _work(rank: int, root: Path, out: Path) -> None:
    """``full``: 3 epochs x 2 steps; ``cut``: the same run, a SIGTERM reaching rank 1 only during its 3rd step, then
    resumed by both ranks (new trainers joining the same group)."""
    results = {"full": _state(_fit(Trainer(_config(root, out, "full"))))}
    trainer = Trainer(_config(root, out, "cut"))
    if rank == 1:
        sigterm_during_step(trainer, 3)
    try:
        trainer.fit()
        results["stopped"] = None
    except TrainingInterrupted:
        results["stopped"] = trainer.global_step
    results["checkpoint"] = read_file(out / "cut" / "checkpoint.pt")["progress"]["global_step"]
    dist.barrier()  # both ranks read the checkpoint before the resumed run rewrites it
    results["resumed"] = _state(_fit(Trainer(_config(root, out, "cut"), resume=True)))
    torch.save(results, out / f"rank{rank}.pt")


def _fit(trainer: Trainer) -> Trainer:
    trainer.fit()
    return trainer


# ------------------------------------------------------------------------------------------------------ tests


def _equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_two_ranks_train_a_detector_as_one_process_gather_map_and_resume(tmp_path) -> None:
    from coco_tiny import make_coco

    root = make_coco(tmp_path / "coco", n_train=8, n_val=5)
    out = tmp_path / "ddp"
    out.mkdir()
    torch.multiprocessing.start_processes(
        _entry, args=(_free_port(), str(root), str(out)), nprocs=WORLD, join=True, start_method="spawn"
    )
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    one = _state(_fit(Trainer(_config(root, tmp_path / "single", "full"))))

    # both ranks hold the same weights, and they are the one-process weights at the global batch
    assert r0["full"]["steps"] == r1["full"]["steps"] == one["steps"] == 6  # 8 images, global batch 4, 3 epochs
    _equal(r0["full"]["student"], r1["full"]["student"])
    changed = [k for k, v in one["student"].items() if v.is_floating_point()]
    init = Trainer(_config(root, tmp_path / "init", "init")).run.student.state_dict()
    assert any(not torch.equal(one["student"][k], init[k]) for k in changed)  # it trained
    for k in changed:
        torch.testing.assert_close(r0["full"]["student"][k], one["student"][k], rtol=1e-4, atol=1e-6, msg=k)
    got, want = r0["full"]["history"][-1], one["history"][-1]
    assert got["train"]["loss"] == pytest.approx(want["train"]["loss"], rel=1e-4)  # rank-averaged

    # the box mAP covers every validation image once (3 + 2 per rank), both ranks agree, it is the one-process mAP
    summary = json.loads((out / "full" / "summary.json").read_text())
    assert summary["last"]["n"] == 5 and summary["steps"] == 6
    assert r0["full"]["history"][-1]["test"] == r1["full"]["history"][-1]["test"]
    for key in ("map", "map_50", "map_75"):
        assert got["test"][key] == pytest.approx(want["test"][key], abs=1e-6), key

    # stopped mid-run on both ranks after the same step (the signal is acted on at the ranks' next agreement),
    # checkpointed there, resumed to the uninterrupted run's state, bit for bit
    assert r0["stopped"] == r1["stopped"] == r0["checkpoint"] == r1["checkpoint"]
    assert 3 <= r0["stopped"] < 6
    assert read_file(out / "cut" / "checkpoint.pt")["world_size"] == WORLD
    assert r0["resumed"]["steps"] == 6
    for r in (r0, r1):
        _equal(r["resumed"]["student"], r0["full"]["student"])
    assert [h["test"] for h in r0["resumed"]["history"]] == [h["test"] for h in r0["full"]["history"]]


def _half(batch: Batch, part: slice) -> Batch:
    return Batch({k: v[part] for k, v in batch.x.items()}, batch.y[part], batch.index[part])


def test_retinanet_kd_gradient_of_the_global_batch_is_the_mean_of_the_halves(coco_tiny, tmp_path) -> None:
    """The fast sibling: the property the two-rank equivalence rests on, in one process. The KD recipe's step
    (detection losses + per-anchor KD) on a batch of 4 has the gradient of the mean of its two halves' gradients."""
    trainer = Trainer(_config(coco_tiny, tmp_path, "g"))
    batch = next(trainer.run.data.train_batches(0))
    assert batch.size == 4
    params = [p for p in trainer.run.student.parameters() if p.requires_grad]

    def grads(b: Batch) -> list[torch.Tensor]:
        out = trainer.step_module(b, trainer.teacher_outputs(b), trainer.start)
        assert set(out.terms) == {"ce", "kd"}
        return torch.autograd.grad(out.total, params, allow_unused=True)

    whole = grads(batch)
    halves = [grads(_half(batch, slice(0, 2))), grads(_half(batch, slice(2, 4)))]
    for g, a, b in zip(whole, *halves):
        if g is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(g, (a + b) / 2, rtol=1e-4, atol=1e-6)
